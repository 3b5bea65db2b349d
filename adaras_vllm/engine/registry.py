"""The neuron maps one process serves, with the operator's bound and defaults.

A process adopts its registry from its engine's configuration (``steering_config``): the
front end when it builds the engine's ``VllmConfig``, the engine core and every worker
when they receive it (``adoption``). Until a process has adopted one (a front end that
has built no engine yet), the maps named by ``ADARAS_NEURON_MAPS`` stand in; the first
map is the default.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from adaras_vllm.maps import NeuronMap

from .params import (
    SteeringDefaults,
    SteeringParamError,
    SteeringParams,
    merge_request_fields,
    parse_steering,
)
from .steering_config import MAPS_ENV, SteeringConfig

ENV_VAR = MAPS_ENV


class MapRegistry:
    """Loaded maps by name, in a fixed order: a request's map id is its position here."""

    def __init__(self, maps: list[NeuronMap], defaults: SteeringDefaults | None = None,
                 config: SteeringConfig | None = None) -> None:
        names = [m.name for m in maps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"neuron map name(s) {', '.join(dup)} given more than once")
        self.maps = list(maps)
        self.names = names
        self.defaults = defaults or (config.defaults if config else SteeringDefaults())
        self.config = config
        self._ids = {n: i for i, n in enumerate(names)}
        self._fingerprints = {m.name: m.fingerprint() for m in maps}
        self.gated_names = [m.name for m in maps if m.gate is not None]
    def __len__(self) -> int:
        return len(self.maps)

    def __bool__(self) -> bool:
        return bool(self.maps)

    def map_id(self, name: str) -> int:
        return self._ids[name]

    def get(self, name: str) -> NeuronMap:
        return self.maps[self._ids[name]]

    def map_fingerprint(self, name: str) -> str:
        return self._fingerprints[name]

    def parse(self, extra_args, fields=None, *, use_default: bool = True) -> SteeringParams:  # noqa: ANN001
        """Decide one request's steering: its ``extra_args`` (and top-level request
        ``fields``, if any) against the loaded maps and the operator's bound and default
        alpha (``use_default=False``: a request that gives no alpha is unsteered)."""
        default = self.defaults.default_alpha if use_default else 0.0
        return parse_steering(
            merge_request_fields(extra_args, fields),
            self.names,
            max_alpha=self.defaults.max_alpha,
            default_alpha=(lambda name: self.get(name).default_alpha) if default is None
            else default,
            gated_maps=self.gated_names,
            default_mode=self.defaults.default_mode
            or (lambda name: self.get(name).default_mode),
            default_positions=self.defaults.default_positions
            or (lambda name: self.get(name).default_positions),
        )

    def check_defaults(self) -> None:
        """Refuse to start when a default would fail every request that gives none."""
        bound = self.defaults.max_alpha
        default = self.defaults.default_alpha
        if (self.defaults.default_mode or self.maps[0].default_mode) == "adaptive" \
                and self.maps[0].gate is None:
            raise SteeringParamError(
                f"the default steer_mode is 'adaptive' but the default map "
                f"{self.maps[0].name!r} has no correctness gate; train one (adaras gate "
                "train) or choose --default-steer-mode always"
            )
        for m in self.maps:
            alpha = m.default_alpha if default is None else default
            if abs(alpha) > bound:
                source = (f"map {m.name!r} default_alpha" if default is None
                          else "the default steer_alpha")
                raise SteeringParamError(
                    f"{source} {alpha:g} exceeds the bound {bound:g} (--max-steer-alpha / "
                    "ADARAS_MAX_STEER_ALPHA); raise the bound or choose a smaller default"
                )

    def fingerprint(self) -> str:
        """Identity of everything the patched graph depends on (order, names, content)."""
        h = hashlib.sha256(b"adaras-steering/1")
        for m in self.maps:
            h.update(f"|{m.name}:{self._fingerprints[m.name]}".encode())
        return h.hexdigest()[:16]

    @classmethod
    def from_spec(cls, spec: str, defaults: SteeringDefaults | None = None) -> MapRegistry:
        """Parse ``name=path,path2`` and load each map (errors name the entry). A bare
        name that is not a file (``aime``) is a map shipped in ``neuron_maps/``."""
        config, maps = SteeringConfig.from_spec(spec, defaults)
        return cls(maps, config=config)

    @classmethod
    def from_config(cls, config: SteeringConfig, where: str) -> MapRegistry:
        """The maps an engine's configuration names, each checked against its fingerprint."""
        return cls(config.load_maps(where), config=config)


_adopted: MapRegistry | None = None
#: The front end's registry of one engine, kept on its ``InputProcessor``: a process may
#: hold several engines' front ends, each deciding with its own maps.
FRONT_END_ATTR = "_adaras_registry"


def adopt_registry(registry: MapRegistry) -> None:
    """From now on this process steers with ``registry`` (its engine's configuration)."""
    global _adopted
    _adopted = registry


def front_end_registry(input_processor: object) -> MapRegistry:
    """The maps one engine's front end decides with (none: an engine built without the
    plugin's watch, which then steers nothing)."""
    registry = getattr(input_processor, FRONT_END_ATTR, None)
    return registry if registry is not None else _EMPTY


_EMPTY = MapRegistry([])


@lru_cache(maxsize=None)
def _from_env(spec: str, defaults: SteeringDefaults) -> MapRegistry:
    return MapRegistry.from_spec(spec, defaults)


def env_registry() -> MapRegistry:
    """The maps and defaults ``ADARAS_*`` variables name (cached per value)."""
    return _from_env(os.environ.get(ENV_VAR, ""), SteeringDefaults.from_env())


def active_registry() -> MapRegistry:
    """What this process steers with: its engine's configuration once adopted, else (a
    front end before its first engine) the maps the environment names."""
    return _adopted if _adopted is not None else env_registry()


def steering_enabled() -> bool:
    return bool(os.environ.get(ENV_VAR, "").strip())
