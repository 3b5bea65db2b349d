"""Per-request steering parameters, read from ``SamplingParams.extra_args``.

The keys are flat (``steer_alpha``, ``steer_map``, ``steer_mode``) so that plain
``vllm serve`` clients can send them as ``vllm_xargs``. One parser serves the front end
(which rejects bad input with a clear error) and the engine processes (which must never
fail a whole batch for one request), so both always agree on what a request means.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STEER_ALPHA = "steer_alpha"
STEER_MAP = "steer_map"
STEER_MODE = "steer_mode"
KNOWN_KEYS = (STEER_ALPHA, STEER_MAP, STEER_MODE)
MODES = ("always", "off")

DEFAULT_MAX_STEER_ALPHA = 8.0


class SteeringParamError(ValueError):
    """A request's steering parameters are invalid; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass(frozen=True)
class SteeringParams:
    """What one request asked for: ``alpha == 0`` means not steered at all."""

    alpha: float
    map_name: str

    @property
    def steered(self) -> bool:
        return self.alpha != 0.0


def max_steer_alpha() -> float:
    """The operator's bound on |steer_alpha| (env ``ADARAS_MAX_STEER_ALPHA``)."""
    raw = os.environ.get("ADARAS_MAX_STEER_ALPHA", "")
    if not raw:
        return DEFAULT_MAX_STEER_ALPHA
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SteeringParamError(
            f"ADARAS_MAX_STEER_ALPHA must be a finite non-negative number, got {raw!r}"
        )
    return value


def parse_steering(
    extra_args: Mapping[str, Any] | None,
    map_names: Sequence[str],
    *,
    max_alpha: float | None = None,
) -> SteeringParams:
    """Parse and validate the steering keys of one request.

    ``map_names`` are the loaded maps, the first being the default. Raises
    ``SteeringParamError`` naming the field and the allowed values.
    """
    if not map_names:
        raise SteeringParamError("steering is not available: no neuron map is loaded")
    args = extra_args or {}
    unknown = sorted(k for k in args if k.startswith("steer_") and k not in KNOWN_KEYS)
    if unknown:
        raise SteeringParamError(
            f"unknown steering field(s) {', '.join(map(repr, unknown))}; "
            f"known fields are {', '.join(KNOWN_KEYS)}",
            field=unknown[0],
        )
    bound = max_steer_alpha() if max_alpha is None else max_alpha

    alpha_raw = args.get(STEER_ALPHA, 0.0)
    if isinstance(alpha_raw, bool) or not isinstance(alpha_raw, (int, float)):
        raise SteeringParamError(
            f"{STEER_ALPHA} must be a finite number in [-{bound:g}, {bound:g}], "
            f"got {alpha_raw!r} ({type(alpha_raw).__name__})",
            field=STEER_ALPHA,
            value=alpha_raw,
        )
    alpha = float(alpha_raw)
    if not math.isfinite(alpha) or abs(alpha) > bound:
        raise SteeringParamError(
            f"{STEER_ALPHA} must be a finite number in [-{bound:g}, {bound:g}], got {alpha_raw!r}",
            field=STEER_ALPHA,
            value=alpha_raw,
        )

    map_name = args.get(STEER_MAP, map_names[0])
    if not isinstance(map_name, str) or map_name not in map_names:
        raise SteeringParamError(
            f"{STEER_MAP} must be one of the loaded maps ({', '.join(map_names)}), "
            f"got {map_name!r}",
            field=STEER_MAP,
            value=map_name,
        )

    mode = args.get(STEER_MODE, "always")
    if mode not in MODES:
        raise SteeringParamError(
            f"{STEER_MODE} must be one of {', '.join(MODES)}, got {mode!r}",
            field=STEER_MODE,
            value=mode,
        )
    if mode == "off":
        alpha = 0.0
    return SteeringParams(alpha=alpha + 0.0, map_name=map_name)  # + 0.0 folds -0.0 into 0.0
