"""Calibration: which sign, strength, neuron count, positions and mode help a model, chosen
on validation by a rule fixed before any answer is seen.

A map built on one model (or published for another) says which neurons matter, not how to
push them: on the modes organism the paper's sign made the model worse, and steering the
generated tokens only cost answers. The grid tries every combination in one engine; the rule
is mechanical and written into the output first, so the choice cannot bend to the results.
A map that does not help is recommended ``off`` (``default_alpha`` 0) rather than shipped as
if it did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from adaras_vllm.maps.map_metadata import POSITIONS

from .runner import Setting
from .summary import SettingSummary

#: The steered modes a grid may try (``off`` is the baseline every cell is compared with).
GRID_MODES = ("always", "adaptive")
DEFAULT_NEURONS = (10, 25, 50, 200)
DEFAULT_MAGNITUDES = (0.3, 1.0, 4.0)


@dataclass(frozen=True)
class CalibrationRule:
    """The pre-registered rule: the most accurate cell that beats ``off`` with McNemar's
    exact p below ``max_p`` and breaks at most ``max_broken_share`` of the answers ``off``
    gets right; ties to fewer right->wrong, smaller |alpha|, fewer neurons, then ``always``
    before ``adaptive`` and positions in POSITIONS order."""

    max_p: float = 0.05
    max_broken_share: float = 0.05

    def __post_init__(self) -> None:
        for name, value in (("p", self.max_p), ("broken", self.max_broken_share)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and 0 < value <= 1):
                raise ValueError(f"--rule {name} must be a number in (0, 1], got {value!r}")

    @classmethod
    def parse(cls, text: str) -> CalibrationRule:
        """``p=0.05,broken=0.05`` (either key may be left out)."""
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, raw = part.partition("=")
            if not sep or key.strip() not in ("p", "broken"):
                raise ValueError(f"--rule must look like p=0.05,broken=0.05 (keys p, broken), "
                                 f"got {text!r}")
            try:
                values[key.strip()] = float(raw)
            except ValueError:
                raise ValueError(f"--rule {key.strip()} must be a number, got {raw!r}") from None
        return cls(max_p=values.get("p", cls.max_p),
                   max_broken_share=values.get("broken", cls.max_broken_share))

    def describe(self) -> str:
        return (f"the most accurate steered setting that is more accurate than off, with "
                f"McNemar's exact p against off below {self.max_p:g} and right->wrong at most "
                f"{self.max_broken_share:g} of the answers off gets right; ties: fewer "
                "right->wrong, then smaller |alpha|, then fewer neurons, then always before "
                "adaptive, then positions in the order from_last_prompt, last_prompt, "
                "generated, then the negative sign. If no setting qualifies: off "
                "(default_alpha 0).")

    def why_not(self, cell: SettingSummary, off: SettingSummary) -> str | None:
        """None when ``cell`` qualifies, else the first condition it fails."""
        if cell.correct <= off.correct:
            return "not more accurate than off"
        if not cell.mcnemar_p < self.max_p:
            return f"McNemar p {cell.mcnemar_p:.3g} >= {self.max_p:g}"
        allowed = self.max_broken_share * off.correct
        if cell.right_to_wrong > math.floor(allowed + 1e-9):  # 0.29 x 100 is 28.999...
            return (f"right->wrong {cell.right_to_wrong} > {self.max_broken_share:g} x "
                    f"{off.correct} = {allowed:g}")
        return None


@dataclass(frozen=True)
class Grid:
    """What is tried: every sign of every magnitude x top-N x positions x mode."""

    magnitudes: tuple[float, ...]
    neurons: tuple[int, ...]
    positions: tuple[str, ...]
    modes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.magnitudes or any(not math.isfinite(a) or a <= 0 for a in self.magnitudes):
            raise ValueError(f"--alphas must be positive magnitudes (both signs are tried), "
                             f"got {list(self.magnitudes)}")
        if not self.neurons or any(n <= 0 for n in self.neurons):
            raise ValueError(f"--neurons must be positive counts, got {list(self.neurons)}")
        bad = [p for p in self.positions if p not in POSITIONS]
        if not self.positions or bad:
            raise ValueError(f"--positions must be from {', '.join(POSITIONS)}, got "
                             f"{list(self.positions)}")
        bad = [m for m in self.modes if m not in GRID_MODES]
        if not self.modes or bad:
            raise ValueError(f"--modes must be from {', '.join(GRID_MODES)}, got "
                             f"{list(self.modes)}")

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(sorted({s * a for a in self.magnitudes for s in (-1.0, 1.0)}))

    def settings(self) -> list[Setting]:
        """``off`` first, then every cell (maps named ``topN``)."""
        cells = [Setting(f"top{n}", a, mode, positions) for mode in self.modes
                 for positions in self.positions for n in self.neurons for a in self.alphas]
        return [Setting(None, 0.0, "off"), *cells]

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": list(self.alphas), "neurons": list(self.neurons),
                "positions": list(self.positions), "modes": list(self.modes),
                "cells": len(self.settings()) - 1}


def neurons_of(cell: SettingSummary) -> int:
    return int((cell.steer_map or "top0")[3:])


def _tie_key(cell: SettingSummary) -> tuple:
    return (-cell.correct, cell.right_to_wrong, abs(cell.alpha), neurons_of(cell),
            GRID_MODES.index(cell.mode), POSITIONS.index(cell.positions or POSITIONS[0]),
            cell.alpha)


@dataclass(frozen=True)
class Calibration:
    """The grid's outcome: the baseline, every cell (with why it did not qualify) and the
    chosen cell (None: recommend off)."""

    off: SettingSummary
    cells: list[tuple[SettingSummary, str | None]]
    chosen: SettingSummary | None

    def cell_rows(self) -> list[dict[str, Any]]:
        return [{**summary_row(c), "qualifies": why is None, "why_not": why}
                for c, why in self.cells]

    @property
    def recommendation(self) -> dict[str, Any]:
        """What the map's defaults become."""
        if self.chosen is None:
            return {"steer": False, "default_alpha": 0.0, "default_positions": POSITIONS[0],
                    "default_mode": "always", "neurons": None}
        c = self.chosen
        return {"steer": True, "default_alpha": c.alpha,
                "default_positions": c.positions or POSITIONS[0], "default_mode": c.mode,
                "neurons": neurons_of(c)}


def decide(summaries: Sequence[SettingSummary], rule: CalibrationRule) -> Calibration:
    """Apply ``rule`` to an ``summarize`` result whose alpha-0 row is ``off``."""
    off = next((s for s in summaries if s.alpha == 0.0), None)
    if off is None:
        raise ValueError("a calibration grid needs its off (alpha 0) setting")
    cells = [(s, rule.why_not(s, off)) for s in summaries if s.alpha != 0.0]
    qualifying = [c for c, why in cells if why is None]
    chosen = min(qualifying, key=_tie_key) if qualifying else None
    return Calibration(off, sorted(cells, key=lambda cw: _tie_key(cw[0])), chosen)


def summary_row(s: SettingSummary) -> dict[str, Any]:
    """A summary as JSON, with ``neurons`` instead of the grid's internal map name."""
    row = asdict(s)
    row["neurons"] = neurons_of(s) if s.alpha != 0.0 else None
    row.pop("steer_map")
    return row
