"""The rule that picks a steering setting from a validation grid, fixed before any test run.

Choosing alpha and the neuron count on validation and then reporting the test split once
only means something if the choice is mechanical. The rule (the same for every organism):
among steered settings with alpha > 0 (the method's direction; negative alphas are a
control), take the highest accuracy; ties go to fewer right->wrong flips, then to the
smaller alpha, then to fewer neurons.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RULE = ("highest validation accuracy among alpha > 0; ties: fewer right->wrong flips, then "
        "smaller alpha, then fewer neurons")
RULE_ANY_SIGN = ("highest validation accuracy among alpha != 0 (either sign); ties: fewer "
                 "right->wrong flips, then smaller |alpha|, then fewer neurons")


def _neurons(steer_map: str | None) -> int:
    """topN -> N (the maps `adaras eval --neurons` names); other names sort last."""
    match = re.fullmatch(r"top(\d+)", steer_map or "")
    return int(match.group(1)) if match else 1 << 30


def choose_setting(summary: Sequence[dict[str, Any]], any_sign: bool = False) -> dict[str, Any]:
    """The chosen row of an `adaras eval` summary (dicts as in its JSON); ``any_sign``
    applies RULE_ANY_SIGN instead of RULE."""
    steered = [s for s in summary if (s["alpha"] != 0 if any_sign else s["alpha"] > 0)]
    if not steered:
        raise ValueError("the grid has no setting with alpha > 0 to choose from"
                         if not any_sign else "the grid has no steered setting")
    return min(steered, key=lambda s: (-s["correct"], s["right_to_wrong"], abs(s["alpha"]),
                                       _neurons(s["steer_map"])))


def choose_from_file(path: str | Path, any_sign: bool = False) -> dict[str, Any]:
    """Read an `adaras eval` results JSON and apply the rule; adds ``neurons`` and ``rule``."""
    results = json.loads(Path(path).read_text())
    row = choose_setting(results["summary"], any_sign)
    baseline = next(s for s in results["summary"] if s["alpha"] == 0.0)
    return {"rule": RULE_ANY_SIGN if any_sign else RULE, "map": row["steer_map"],
            "neurons": _neurons(row["steer_map"]),
            "alpha": row["alpha"], "accuracy": row["accuracy"], "right_to_wrong":
            row["right_to_wrong"], "wrong_to_right": row["wrong_to_right"],
            "mcnemar_p": row["mcnemar_p"], "baseline_accuracy": baseline["accuracy"],
            "grid": str(path)}
