"""The operator's steering settings as the HTTP layer shows them, and the audit object.

What a request gets is decided by the engine front end (``adaras_vllm.engine.frontend``)
from the same settings, which travel in the engine's configuration; this
module only describes them (``/v1/steering/maps``, the OpenAPI schema) and turns a
decision into the ``steering`` object of a response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaras_vllm.engine.params import SteeringParams
from adaras_vllm.maps import NeuronMap


def applied_json(decision: SteeringParams,
                 gate: list[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The ``steering`` object of a response: what the engine was told to do, and for
    ``adaptive`` what the gate decided (``gate``: one result per prompt of the request;
    None where the gate never decided, e.g. the request ended during its prefill)."""
    out: dict[str, Any] = {"map": decision.map_name, "alpha": decision.alpha,
                           "applied": decision.steered, "mode": decision.mode,
                           "positions": decision.positions}
    if decision.gated:
        first = (gate or [None])[0]
        out["applied"] = bool(first and first["fired"])
        out["gate_score"] = first["p_good"] if first else None
        out["gate_threshold"] = first["threshold"] if first else None
        if gate is not None and len(gate) > 1:  # several prompts in one request
            out["gate_scores"] = [g["p_good"] if g else None for g in gate]
            out["applied_per_prompt"] = [bool(g and g["fired"]) for g in gate]
    return out


@dataclass(frozen=True)
class SteeringPolicy:
    """The operator's choices: loaded maps (first = default), default and max alpha."""

    maps: Sequence[NeuronMap]
    max_alpha: float
    default_alpha: float | None = None  # None: the chosen map's own default_alpha
    default_mode: str | None = None  # None: the chosen map's own default_mode
    default_positions: str | None = None  # None: the chosen map's own default_positions

    @property
    def map_names(self) -> list[str]:
        return [m.name for m in self.maps]

    def gate_of(self, map_name: str) -> Any:
        for m in self.maps:
            if m.name == map_name:
                return m.gate
        return None

    def map_named(self, map_name: str) -> NeuronMap:
        return next(m for m in self.maps if m.name == map_name)

    def default_mode_for(self, map_name: str) -> str:
        """The mode a request naming ``map_name`` and no mode gets."""
        return self.default_mode or self.map_named(map_name).default_mode

    def default_positions_for(self, map_name: str) -> str:
        return self.default_positions or self.map_named(map_name).default_positions

    def default_alpha_for(self, map_name: str) -> float:
        if self.default_alpha is not None:
            return self.default_alpha
        for m in self.maps:
            if m.name == map_name:
                return m.default_alpha
        return 0.0
