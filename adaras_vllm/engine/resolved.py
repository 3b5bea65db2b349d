"""A request's steering as the front end resolved it: the one record the engine reads.

The front end (``frontend.decide``) applies the operator's bounds and defaults once and
writes the result into the request's ``extra_args``. Everything after it (the prefix-cache
key, the scheduler's trim, every worker) reads that record with ``from_extra_args`` and
never applies a default of its own: so no process can steer a request differently from
what the front end reported. A key the front end did not write means "not given":
alpha 0, the default map, mode ``always``, positions ``from_last_prompt``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .params import (
    DEFAULT_POSITIONS,
    MODES,
    POSITIONS,
    STEER_ALPHA,
    STEER_MAP,
    STEER_MODE,
    STEER_POSITIONS,
    SteeringParams,
    float_or_nan,
)

logger = logging.getLogger("vllm.adaras")

#: ``extra_args`` key of an adaptive request's gate tag (its results are filed under it).
GATE_KEY = "adaras_gate_key"
_CACHE_ATTR = "_adaras_resolved"


@dataclass(frozen=True)
class ResolvedSteering(SteeringParams):
    """What runs for one request: the front end's decision, plus the map's id in this
    process's registry and an adaptive request's gate tag. ``alpha`` 0: unsteered."""

    map_id: int = 0
    gate_key: str | None = None

    @classmethod
    def unsteered(cls, map_names: Sequence[str]) -> ResolvedSteering:
        return cls(0.0, map_names[0] if map_names else "", "off")

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None, map_names: Sequence[str],
                        gated_maps: Sequence[str] = ()) -> ResolvedSteering:
        """Read the front end's record; a malformed one (the front end was bypassed) is
        logged and left unsteered rather than failing the batch it is in."""
        args = extra_args or {}
        if not map_names:
            return cls.unsteered(map_names)
        alpha = args.get(STEER_ALPHA, 0.0)
        map_name = args.get(STEER_MAP, map_names[0])
        mode = args.get(STEER_MODE, "always")
        positions = args.get(STEER_POSITIONS, DEFAULT_POSITIONS)
        problem = None
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            problem = f"{STEER_ALPHA} {alpha!r:.80} is not a number"
        elif not math.isfinite(float_or_nan(alpha)):
            problem = f"{STEER_ALPHA} {str(alpha)[:80]} is not a finite float"
        elif map_name not in map_names:
            problem = f"{STEER_MAP} {map_name!r:.80} is not a loaded map"
        elif mode not in MODES:
            problem = f"{STEER_MODE} {mode!r:.80} is not one of {', '.join(MODES)}"
        elif positions not in POSITIONS:
            problem = f"{STEER_POSITIONS} {positions!r:.80} is not one of {', '.join(POSITIONS)}"
        elif mode == "adaptive" and map_name not in gated_maps:
            problem = f"map {map_name!r} has no gate for {STEER_MODE} 'adaptive'"
        if problem is not None:
            logger.warning("adaras: a request's steering record is malformed (%s); it is "
                           "not steered", problem)
            return cls.unsteered(map_names)
        value = 0.0 if mode == "off" else float_or_nan(alpha) + 0.0
        key = args.get(GATE_KEY)
        return cls(value, map_name, mode, positions, map_id=map_names.index(map_name),
                   gate_key=str(key) if key is not None and mode == "adaptive" and value
                   else None)


def resolved_of(request: Any, map_names: Sequence[str], gated_maps: Sequence[str]) -> ResolvedSteering:
    """The record of a scheduler ``Request``, kept on it for as long as its parameters are
    the same object (a streaming-input session swaps in each chunk's parameters)."""
    params = getattr(request, "sampling_params", None)
    cached = getattr(request, _CACHE_ATTR, None)
    if cached is not None and cached[0] is params:
        return cached[1]
    record = ResolvedSteering.from_extra_args(
        getattr(params, "extra_args", None), map_names, gated_maps)
    try:
        setattr(request, _CACHE_ATTR, (params, record))
    except AttributeError:  # a slotted stand-in: read every time
        pass
    return record
