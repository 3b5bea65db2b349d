"""Turn a request's ``steer_*`` fields into what the engine reads, or refuse them.

The server accepts ``steer_alpha``, ``steer_map`` and ``steer_mode`` as top-level fields
(what the ``openai`` SDK sends with ``extra_body``) and, as plain ``vllm serve`` does,
inside ``vllm_xargs``. Both mean the same; giving both with different values is an
error. Values are checked by the same parser the engine uses, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaras_vllm.engine.params import (
    STEER_ALPHA,
    STEER_MAP,
    STEER_MODE,
    SteeringParamError,
    parse_steering,
)
from adaras_vllm.maps import NeuronMap

SERVER_MODES = ("always", "off", "adaptive")


class SteeringFieldError(ValueError):
    """A client error in the steering fields; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AppliedSteering:
    """What the engine was told to do for one request (echoed back to the client)."""

    map: str
    alpha: float
    mode: str

    @property
    def applied(self) -> bool:
        return self.alpha != 0.0

    def as_json(self) -> dict[str, Any]:
        return {"map": self.map, "alpha": self.alpha, "applied": self.applied, "mode": self.mode}


@dataclass(frozen=True)
class SteeringPolicy:
    """The operator's choices: loaded maps (first = default), default and max alpha."""

    maps: Sequence[NeuronMap]
    max_alpha: float
    default_alpha: float | None = None  # None: the chosen map's own default_alpha

    @property
    def map_names(self) -> list[str]:
        return [m.name for m in self.maps]

    def default_alpha_for(self, map_name: str) -> float:
        if self.default_alpha is not None:
            return self.default_alpha
        for m in self.maps:
            if m.name == map_name:
                return m.default_alpha
        return 0.0

    def resolve(self, body: dict[str, Any]) -> tuple[dict[str, Any], AppliedSteering]:
        """Validate a request body's steering fields; return the body for vLLM.

        The returned body carries the resolved values in ``vllm_xargs`` (which vLLM puts
        in ``SamplingParams.extra_args``) and no top-level ``steer_*`` keys, which plain
        vLLM would silently ignore.
        """
        body = dict(body)
        top = {k: body.pop(k) for k in list(body) if k.startswith("steer_")}
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            raise SteeringFieldError(
                f"vllm_xargs must be an object, got {type(xargs).__name__}", "vllm_xargs"
            )
        in_xargs = {k: v for k, v in (xargs or {}).items() if k.startswith("steer_")}
        for key, value in top.items():
            if key in in_xargs and in_xargs[key] != value:
                raise SteeringFieldError(
                    f"{key} is given both as a field ({value!r}) and in vllm_xargs "
                    f"({in_xargs[key]!r}); give it once",
                    key,
                )
        fields = {**in_xargs, **{k: v for k, v in top.items() if v is not None}}
        mode = fields.get(STEER_MODE, "always")
        if mode == "adaptive":  # known to the API, not servable yet; the rest: the parser
            raise SteeringFieldError(
                f"{STEER_MODE} 'adaptive' needs a correctness gate and none is loaded on this "
                "server; use 'always' or 'off'",
                STEER_MODE,
            )
        map_name = fields.get(STEER_MAP, self.map_names[0])
        if STEER_ALPHA not in fields and isinstance(map_name, str):
            fields[STEER_ALPHA] = self.default_alpha_for(map_name)
        try:
            parsed = parse_steering(fields, self.map_names, max_alpha=self.max_alpha)
        except SteeringParamError as e:
            raise SteeringFieldError(str(e), e.field) from None

        new_xargs = {k: v for k, v in (xargs or {}).items() if not k.startswith("steer_")}
        new_xargs.update({STEER_ALPHA: parsed.alpha, STEER_MAP: parsed.map_name})
        body["vllm_xargs"] = new_xargs
        return body, AppliedSteering(map=parsed.map_name, alpha=parsed.alpha, mode=str(mode))
