"""A request's steering, decided in one place: ``parse_steering``.

The keys are flat (``steer_alpha``, ``steer_map``, ``steer_mode``) so that plain
``vllm serve`` clients can send them as ``vllm_xargs``. The engine front end calls this
parser for every request of every route and entry point (HTTP, ``vllm serve``, offline
``LLM``), applies the operator's defaults and bounds, and writes the *resolved* values back
into the request's ``extra_args``. Engine processes read that record with
``ResolvedSteering.from_extra_args`` (``resolved.py``), which applies no default of its own
and never fails a whole batch for one request, so the front end, the prefix-cache key and
the workers always agree on what a request means.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaras_vllm.maps.map_metadata import DEFAULT_POSITIONS, POSITIONS

STEER_ALPHA = "steer_alpha"
STEER_MAP = "steer_map"
STEER_MODE = "steer_mode"
STEER_POSITIONS = "steer_positions"
KNOWN_KEYS = (STEER_ALPHA, STEER_MAP, STEER_MODE, STEER_POSITIONS)
MODES = ("always", "off", "adaptive")

DEFAULT_MAX_STEER_ALPHA = 8.0
MAX_ALPHA_ENV = "ADARAS_MAX_STEER_ALPHA"
#: Alpha for requests that give none: a number, or ``map`` for the chosen map's own
#: ``default_alpha``. Unset: 0 (plain vLLM with the plugin steers only when asked).
DEFAULT_ALPHA_ENV = "ADARAS_DEFAULT_STEER_ALPHA"
#: Mode for requests that give none (``adaras serve --default-steer-mode``); unset: always.
DEFAULT_MODE_ENV = "ADARAS_DEFAULT_STEER_MODE"
#: Positions for requests that give none; unset (or ``map``): the chosen map's own.
DEFAULT_POSITIONS_ENV = "ADARAS_DEFAULT_STEER_POSITIONS"


class SteeringParamError(ValueError):
    """A request's steering parameters are invalid; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass(frozen=True)
class SteeringParams:
    """What was decided for one request: ``alpha == 0`` means not steered at all."""

    alpha: float
    map_name: str
    mode: str = "always"
    positions: str = DEFAULT_POSITIONS

    @property
    def steered(self) -> bool:
        """Steering may apply (for ``adaptive``: if the gate fires)."""
        return self.alpha != 0.0

    @property
    def gated(self) -> bool:
        """The gate decides: ``adaptive`` with a non-zero alpha."""
        return self.mode == "adaptive" and self.alpha != 0.0

    def as_extra_args(self) -> dict[str, Any]:
        """The resolved keys, as written back into ``SamplingParams.extra_args``."""
        return {STEER_ALPHA: self.alpha, STEER_MAP: self.map_name, STEER_MODE: self.mode,
                STEER_POSITIONS: self.positions}

    def first_and_last_steered(self, prompt_len: int) -> tuple[int, int]:
        """The positions ``[first, last]`` this request steers (``last`` -1: no end)."""
        return steered_span(self.positions, prompt_len)


_LOOKALIKES = ("steeralpha", "steermap", "steermode", "steerpositions")


def is_steering_key(key: object) -> bool:
    """``steer_*`` in any letter case, or with ``-`` or nothing for ``_``: a misspelt
    ``Steer_Alpha`` or ``steer-alpha`` must not pass silently."""
    if not isinstance(key, str):
        return False
    folded = key.lower().replace("-", "_")
    return folded.startswith("steer_") or folded in _LOOKALIKES


@dataclass(frozen=True)
class SteeringDefaults:
    """The operator's bound and defaults: ``default_alpha`` None means "the chosen map's
    own ``default_alpha``"; 0 (plain vLLM with the plugin) steers only when asked."""

    max_alpha: float = DEFAULT_MAX_STEER_ALPHA
    default_alpha: float | None = 0.0
    default_mode: str | None = None  # None: the chosen map's own default_mode (else always)
    default_positions: str | None = None  # None: the chosen map's own default_positions

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SteeringDefaults:
        """From ``ADARAS_MAX_STEER_ALPHA``, ``ADARAS_DEFAULT_STEER_ALPHA``,
        ``ADARAS_DEFAULT_STEER_MODE`` and ``ADARAS_DEFAULT_STEER_POSITIONS`` (how plain
        ``vllm serve`` users set them)."""
        env = os.environ if environ is None else environ
        return cls(max_steer_alpha(env), default_steer_alpha(env), default_steer_mode(env),
                   default_steer_positions(env))


def max_steer_alpha(environ: Mapping[str, str] | None = None) -> float:
    """The operator's bound on |steer_alpha| (env ``ADARAS_MAX_STEER_ALPHA``)."""
    raw = (os.environ if environ is None else environ).get(MAX_ALPHA_ENV, "")
    if not raw:
        return DEFAULT_MAX_STEER_ALPHA
    value = float_or_nan(raw)
    if not math.isfinite(value) or value < 0:
        raise SteeringParamError(
            f"{MAX_ALPHA_ENV} must be a finite non-negative number, got {raw!r}"
        )
    return value


def default_steer_alpha(environ: Mapping[str, str] | None = None) -> float | None:
    """The operator's default alpha (env ``ADARAS_DEFAULT_STEER_ALPHA``): a number, or
    None meaning "the chosen map's own ``default_alpha``"."""
    raw = (os.environ if environ is None else environ).get(DEFAULT_ALPHA_ENV, "").strip()
    if not raw:
        return 0.0
    if raw == "map":
        return None
    value = float_or_nan(raw)
    if not math.isfinite(value):
        raise SteeringParamError(
            f"{DEFAULT_ALPHA_ENV} must be a finite number or 'map', got {raw!r}"
        )
    return value


def default_steer_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """The operator's default mode (env ``ADARAS_DEFAULT_STEER_MODE``); None (unset or
    ``map``): each map's own ``default_mode``, which is ``always`` unless calibrated."""
    return _choice_or_map(environ, DEFAULT_MODE_ENV, MODES)


def default_steer_positions(environ: Mapping[str, str] | None = None) -> str | None:
    """The operator's default positions (env ``ADARAS_DEFAULT_STEER_POSITIONS``); None
    (unset or ``map``): each map's own ``default_positions``."""
    return _choice_or_map(environ, DEFAULT_POSITIONS_ENV, POSITIONS)


def _choice_or_map(environ: Mapping[str, str] | None, name: str,
                   allowed: Sequence[str]) -> str | None:
    """One of ``allowed`` from env ``name``; None when it is unset or ``map``."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if raw in ("", "map"):
        return None
    if raw not in allowed:
        raise SteeringParamError(
            f"{name} must be one of {', '.join(allowed)} or 'map', got {raw[:80]!r}")
    return raw


def steered_span(positions: str, prompt_len: int) -> tuple[int, int]:
    """``[first, last]`` steered positions of a request with ``prompt_len`` tokens (``last``
    -1: every later position). The rows the device compares each token's position with."""
    if positions == "last_prompt":
        return prompt_len - 1, prompt_len - 1
    if positions == "generated":
        return prompt_len, -1
    return prompt_len - 1, -1


def steered_spans(codes: np.ndarray, prompt_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``steered_span`` for a batch: ``codes`` index ``POSITIONS``, one per request."""
    generated = codes == POSITIONS.index("generated")
    first = np.where(generated, prompt_len, prompt_len - 1)
    last = np.where(codes == POSITIONS.index("last_prompt"), prompt_len - 1, -1)
    return first.astype(np.int64), last.astype(np.int64)


def merge_request_fields(
    extra_args: Mapping[str, Any] | None, fields: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Join top-level request fields (``"steer_alpha": 2`` in the body) with
    ``vllm_xargs``; both mean the same, and giving a key twice with different values is an
    error rather than a silent choice."""
    merged = dict(extra_args or {})
    for key, value in (fields or {}).items():
        if key in merged and merged[key] != value:
            raise SteeringParamError(
                f"{key} is given both as a field ({value!r}) and in vllm_xargs "
                f"({merged[key]!r}); give it once",
                field=key,
                value=value,
            )
        merged[key] = value
    return merged


def parse_steering(
    extra_args: Mapping[str, Any] | None,
    map_names: Sequence[str],
    *,
    max_alpha: float | None = None,
    default_alpha: float | Callable[[str], float] = 0.0,
    gated_maps: Sequence[str] = (),
    default_mode: str | Callable[[str], str] = "always",
    default_positions: str | Callable[[str], str] = DEFAULT_POSITIONS,
) -> SteeringParams:
    """Parse, bound and resolve the steering keys of one request.

    ``map_names`` are the loaded maps, the first being the default. ``default_alpha`` is
    used when the request gives no ``steer_alpha`` (a callable gets the chosen map's
    name). ``gated_maps`` are the maps that carry a correctness gate (``adaptive`` needs
    one). Raises ``SteeringParamError`` naming the field and the allowed values.
    """
    if not map_names:
        raise SteeringParamError("steering is not available: no neuron map is loaded")
    args = extra_args or {}
    unknown = sorted(str(k) for k in args if is_steering_key(k) and k not in KNOWN_KEYS)
    if unknown:
        raise SteeringParamError(
            f"unknown steering field(s) {', '.join(_short(k) for k in unknown[:5])}; "
            f"known fields are {', '.join(KNOWN_KEYS)}",
            field=unknown[0][:_FIELD_CHARS],
        )
    bound = DEFAULT_MAX_STEER_ALPHA if max_alpha is None else max_alpha

    map_name = args.get(STEER_MAP, map_names[0])
    if not isinstance(map_name, str) or map_name not in map_names:
        raise SteeringParamError(
            f"{STEER_MAP} must be one of the loaded maps ({', '.join(map_names)}), "
            f"got {_short(map_name)}",
            field=STEER_MAP,
            value=map_name,
        )

    if STEER_ALPHA in args:
        alpha = _checked_alpha(args[STEER_ALPHA], bound)
    else:
        alpha = default_alpha(map_name) if callable(default_alpha) else float(default_alpha)

    if STEER_MODE in args:
        mode = args[STEER_MODE]
    else:
        mode = default_mode(map_name) if callable(default_mode) else default_mode
    if mode == "adaptive" and map_name not in gated_maps:
        with_gate = (f"maps with a gate: {', '.join(gated_maps)}" if gated_maps
                     else "no loaded map has one")
        raise SteeringParamError(
            f"{STEER_MODE} 'adaptive' needs a map with a correctness gate, and map "
            f"{map_name!r} has none ({with_gate}); use 'always' or 'off', or train one with "
            "adaras gate train",
            field=STEER_MODE,
            value=mode,
        )
    _check_one_of(STEER_MODE, mode, MODES)
    if STEER_POSITIONS in args:
        positions = args[STEER_POSITIONS]
        _check_one_of(STEER_POSITIONS, positions, POSITIONS)
    else:
        positions = (default_positions(map_name) if callable(default_positions)
                     else default_positions)
    if mode == "off":
        alpha = 0.0
    return SteeringParams(alpha=alpha + 0.0, map_name=map_name, mode=mode,  # folds -0.0
                          positions=positions)


def _check_one_of(field: str, value: Any, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise SteeringParamError(
            f"{field} must be one of {', '.join(allowed)}, got {_short(value)}",
            field=field,
            value=value,
        )


def _checked_alpha(raw: Any, bound: float) -> float:
    expected = f"{STEER_ALPHA} must be a finite number in [-{bound:g}, {bound:g}]"
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise SteeringParamError(
            f"{expected}, got {_short(raw)} ({type(raw).__name__})", field=STEER_ALPHA, value=raw
        )
    value = float_or_nan(raw)  # a 400-digit integer overflows float: out of bounds too
    if not math.isfinite(value) or abs(value) > bound:
        raise SteeringParamError(f"{expected}, got {_short(raw)}", field=STEER_ALPHA, value=raw)
    return value


def float_or_nan(raw: Any) -> float:
    """``float(raw)``, or NaN where it has none (a string, an int past float's range)."""
    try:
        return float(raw)
    except (TypeError, ValueError, OverflowError):
        return math.nan


_INT_DIGITS = 4300
_FIELD_CHARS = 100  # a client-chosen key name echoed as ``param``: cut, like values


def _short(value: Any, limit: int = 80) -> str:
    """repr() of a client's value, cut so an error message stays one readable line."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-str digit limit
        return f"an integer of more than {_INT_DIGITS} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
