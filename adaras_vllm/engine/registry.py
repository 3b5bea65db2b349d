"""The neuron maps this process serves, loaded once from ``ADARAS_NEURON_MAPS``.

Every vLLM process (front end, engine core, each worker) runs the plugin, so each loads
the same maps from the same environment variable; the first map is the default.
Format: comma-separated ``name=path`` or bare ``path`` (named by the map's metadata).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from adaras_vllm.maps import NeuronMap
from adaras_vllm.maps.shipped import resolve_map_path

from .params import (
    SteeringParamError,
    SteeringParams,
    default_steer_alpha,
    default_steer_mode,
    max_steer_alpha,
    merge_request_fields,
    parse_steering,
)

ENV_VAR = "ADARAS_NEURON_MAPS"


class MapRegistry:
    """Loaded maps by name, in a fixed order: a request's map id is its position here."""

    def __init__(self, maps: list[NeuronMap]) -> None:
        names = [m.name for m in maps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"neuron map name(s) {', '.join(dup)} given more than once")
        self.maps = list(maps)
        self.names = names
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
        default = default_steer_alpha() if use_default else 0.0
        return parse_steering(
            merge_request_fields(extra_args, fields),
            self.names,
            max_alpha=max_steer_alpha(),
            default_alpha=(lambda name: self.get(name).default_alpha) if default is None
            else default,
            gated_maps=self.gated_names,
            default_mode=default_steer_mode(),
        )

    def check_defaults(self) -> None:
        """Refuse to start when a default would fail every request that gives none."""
        bound = max_steer_alpha()
        default = default_steer_alpha()
        if default_steer_mode() == "adaptive" and self.maps[0].gate is None:
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
    def from_spec(cls, spec: str) -> "MapRegistry":
        """Parse ``name=path,path2`` and load each map (errors name the entry). A bare
        name that is not a file (``aime``) is a map shipped in ``neuron_maps/``."""
        maps: list[NeuronMap] = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            name, sep, path = entry.partition("=")
            if not sep:
                name, path = "", entry
            try:
                p = resolve_map_path(path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e} (entry {entry!r})") from None
            m = NeuronMap.load(p)
            if name:
                m = m.renamed(name)
            maps.append(m)
        return cls(maps)


@lru_cache(maxsize=None)
def _load(spec: str) -> MapRegistry:
    return MapRegistry.from_spec(spec)


def active_registry() -> MapRegistry:
    """The maps named by the environment of this process (cached per spec)."""
    return _load(os.environ.get(ENV_VAR, ""))


def steering_enabled() -> bool:
    return bool(os.environ.get(ENV_VAR, "").strip())
