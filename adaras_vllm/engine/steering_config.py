"""The steering configuration one engine runs with, carried inside its own ``VllmConfig``.

vLLM ships ``VllmConfig.additional_config`` to every process it starts (engine cores,
workers, every data-parallel rank, Ray actors) and hashes it into ``compute_hash``, the
compile-cache key. The maps (absolute paths and fingerprints), the alpha bound and the
defaults travel there under ``"adaras"``. Every process loads the maps from the paths it
names and checks each against its fingerprint, so no rank can steer with other maps than
the front end reports. Environment variables only *name* maps for plain ``vllm serve`` /
``LLM`` users: the front end turns them into this record once (``from_env``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaras_vllm.maps import NeuronMap
from adaras_vllm.maps.shipped import resolve_map_path

from .params import MODES, POSITIONS, SteeringDefaults

KEY = "adaras"
#: The record's version; it is part of what the compile-cache key hashes, so a change to
#: the steer op bumps it. 2: ``default_mode`` may be ``map`` (the map's own).
SCHEMA = 2
#: ``name=path,path2``: the maps plain ``vllm serve`` / ``LLM`` users name.
MAPS_ENV = "ADARAS_NEURON_MAPS"


class SteeringConfigError(ValueError):
    """The ``adaras`` engine configuration is malformed, or this process cannot honour it."""


@dataclass(frozen=True)
class MapSource:
    """One map as the front end loaded it: its served name, file and content fingerprint."""

    name: str
    path: str
    fingerprint: str

    def load(self, where: str) -> NeuronMap:
        """The map at ``path`` under ``name``, refused (naming ``where``, the map and the file)
        unless it is the very map the front end loaded."""
        if not Path(self.path).is_file():
            raise SteeringConfigError(
                f"adaras: {where}: neuron map {self.name!r} is missing: no file at {self.path}; "
                "every node must have the front end's map files at the same paths"
            )
        try:
            loaded = NeuronMap.load(self.path).renamed(self.name)
        except (OSError, ValueError) as e:
            raise SteeringConfigError(
                f"adaras: {where}: neuron map {self.name!r} at {self.path} cannot be loaded: "
                f"{' '.join(str(e).split())}") from None
        found = loaded.fingerprint()
        if found != self.fingerprint:
            raise SteeringConfigError(
                f"adaras: {where}: neuron map {self.name!r} at {self.path} differs from the "
                f"front end's: fingerprint {found}, expected {self.fingerprint}; give every "
                "node the same map files"
            )
        return loaded


@dataclass(frozen=True)
class SteeringConfig:
    """Everything an engine's steering depends on, parsed once per process."""

    maps: tuple[MapSource, ...]
    defaults: SteeringDefaults = SteeringDefaults()

    @classmethod
    def from_spec(cls, spec: str, defaults: SteeringDefaults | None = None
                  ) -> tuple[SteeringConfig, list[NeuronMap]]:
        """Parse ``name=path,path2`` (a bare name that is no file is a shipped map), load each
        map (errors name the entry) and record its absolute path and fingerprint."""
        sources: list[MapSource] = []
        maps: list[NeuronMap] = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            name, sep, path = entry.partition("=")
            if not sep:
                name, path = "", entry
            try:
                resolved = resolve_map_path(path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e} (entry {entry!r})") from None
            m = NeuronMap.load(resolved)
            if name:
                m = m.renamed(name)
            maps.append(m)
            sources.append(MapSource(m.name, str(Path(resolved).resolve()), m.fingerprint()))
        return cls(tuple(sources), defaults or SteeringDefaults()), maps

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SteeringConfig | None:
        """The maps and defaults named by ``ADARAS_*`` variables (None without maps)."""
        env = os.environ if environ is None else environ
        spec = env.get(MAPS_ENV, "").strip()
        if not spec:
            return None
        return cls.from_spec(spec, SteeringDefaults.from_env(env))[0]

    def load_maps(self, where: str) -> list[NeuronMap]:
        """Every map, each checked against its fingerprint (``where``: this process, for
        the message that refuses a missing or different file)."""
        return [source.load(where) for source in self.maps]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.maps]

    def fingerprint(self) -> str:
        """One id for the whole configuration: what workers report and launchers compare."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (vLLM hashes ``additional_config`` as JSON)."""
        d = self.defaults
        return {
            "schema": SCHEMA,
            "maps": [{"name": m.name, "path": m.path, "fingerprint": m.fingerprint}
                     for m in self.maps],
            "max_alpha": d.max_alpha,
            "default_alpha": "map" if d.default_alpha is None else d.default_alpha,
            "default_mode": d.default_mode or "map",
            "default_positions": d.default_positions or "map",
        }

    @classmethod
    def from_dict(cls, raw: Any) -> SteeringConfig:
        """Parse what ``to_dict`` wrote (and what an operator may write by hand in
        ``--additional-config``), naming the field that is wrong."""
        where = f"additional_config[{KEY!r}]"
        if not isinstance(raw, Mapping):
            raise SteeringConfigError(f"{where} must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"schema", "maps", "max_alpha", "default_alpha",
                                     "default_mode", "default_positions"})
        if unknown:
            raise SteeringConfigError(f"{where} has unknown field(s) {', '.join(unknown)}")
        if raw.get("schema", SCHEMA) != SCHEMA:
            raise SteeringConfigError(f"{where}.schema must be {SCHEMA}, got "
                                      f"{raw.get('schema')!r}: another adaras-vllm version")
        maps = raw.get("maps")
        if not isinstance(maps, list) or not maps:
            raise SteeringConfigError(f"{where}.maps must be a non-empty list of "
                                      "{name, path, fingerprint} objects")
        sources = []
        for i, m in enumerate(maps):
            fields = ("name", "path", "fingerprint")
            if not isinstance(m, Mapping) or not all(isinstance(m.get(f), str) and m.get(f)
                                                     for f in fields):
                raise SteeringConfigError(f"{where}.maps[{i}] must have string fields "
                                          f"{', '.join(fields)}, got {m!r}"[:300])
            if not Path(m["path"]).is_absolute():
                raise SteeringConfigError(f"{where}.maps[{i}].path must be absolute, got "
                                          f"{m['path']!r}")
            sources.append(MapSource(m["name"], m["path"], m["fingerprint"]))
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise SteeringConfigError(f"{where}.maps names a map more than once: {names}")
        max_alpha = _number(raw.get("max_alpha", SteeringDefaults.max_alpha), f"{where}.max_alpha")
        if max_alpha < 0:
            raise SteeringConfigError(f"{where}.max_alpha must be >= 0, got {max_alpha}")
        default = raw.get("default_alpha", 0.0)
        default_alpha = None if default == "map" else _number(default, f"{where}.default_alpha")
        mode = raw.get("default_mode", "map")
        if mode != "map" and mode not in MODES:
            raise SteeringConfigError(f"{where}.default_mode must be one of {', '.join(MODES)} "
                                      f"or 'map', got {mode!r}")
        positions = raw.get("default_positions", "map")
        if positions != "map" and positions not in POSITIONS:
            raise SteeringConfigError(f"{where}.default_positions must be one of "
                                      f"{', '.join(POSITIONS)} or 'map', got {positions!r}")
        return cls(tuple(sources), SteeringDefaults(max_alpha, default_alpha,
                                                    None if mode == "map" else mode,
                                                    None if positions == "map" else positions))


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise SteeringConfigError(f"{what} must be a finite number, got {raw!r}")
    return float(raw)


def config_of(vllm_config: Any) -> SteeringConfig | None:
    """The steering configuration an engine carries (None: this engine does not steer)."""
    extra = getattr(vllm_config, "additional_config", None)
    if not isinstance(extra, Mapping) or KEY not in extra:
        return None
    return SteeringConfig.from_dict(extra[KEY])


def carry_in(vllm_config: Any, config: SteeringConfig) -> None:
    """Write ``config`` into the engine's own configuration, which vLLM ships everywhere."""
    extra = getattr(vllm_config, "additional_config", None)
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise SteeringConfigError(
            "adaras: the engine's additional_config is not a dict "
            f"({type(extra).__name__}); steering travels in additional_config['adaras']"
        )
    extra[KEY] = config.to_dict()
    vllm_config.additional_config = extra
