"""A map's metadata: the str -> str header, checked and parsed once into a typed record.

safetensors stores metadata as strings only; parsing them in one place means every reader
gets the same numbers and every malformed value is refused with the same message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from .errors import MapFormatError, quoted, some

FORMAT = "adaras-neuron-map/1"

#: Metadata keys every map file carries (all values are strings, as safetensors requires).
REQUIRED_METADATA = (
    "format",
    "name",
    "model",
    "model_type",
    "num_hidden_layers",
    "intermediate_size",
    "hidden_size",
    "criterion",
    "top_k",
    "default_alpha",
    "source",
    "created",
)

#: Metadata that records *when*, not *what*: left out of the fingerprint so that rebuilding the
#: same map yields the same fingerprint.
NOT_FINGERPRINTED = frozenset({"created", "calibration_created"})

#: The largest value an integer metadata field may have: indices are int64, and a bound keeps
#: int() away from Python's limit on converting very long digit strings (ValueError).
MAX_METADATA_INT = 2**63 - 1

#: Metadata keys that belong to the map's correctness gate, not to the map.
GATE_METADATA_PREFIX = "gate_"

_INTEGER_KEYS = ("num_hidden_layers", "intermediate_size", "hidden_size", "top_k")


def map_who(metadata: Mapping[str, Any]) -> str:
    """How messages name a map, from metadata that may not be valid yet."""
    return f"neuron map {quoted(metadata.get('name', '?'))}"


#: Which positions of a request are steered (prompt length P): ``from_last_prompt``
#: t >= P-1 (the paper's rule), ``last_prompt`` t = P-1 only, ``generated`` t >= P.
POSITIONS = ("from_last_prompt", "last_prompt", "generated")
DEFAULT_POSITIONS = "from_last_prompt"

#: The steer_mode a map recommends for requests that give none (written by
#: ``adaras maps calibrate``): ``adaptive`` needs the map's gate. "Steer nothing" is a
#: ``default_alpha`` of 0, so that a request that does give an alpha is still steered.
MAP_MODES = ("always", "adaptive")
DEFAULT_MODE = "always"


@dataclass(frozen=True)
class MapMetadata:
    """The required metadata as typed values; `extra` holds the other non-gate entries."""

    name: str
    model: str
    model_type: str
    num_hidden_layers: int
    intermediate_size: int
    hidden_size: int
    criterion: str
    top_k: int
    default_alpha: float
    source: str
    created: str
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                     hash=False)

    @property
    def who(self) -> str:
        return map_who({"name": self.name})

    @classmethod
    def parse(cls, metadata: Mapping[str, str], who: str) -> MapMetadata:
        """Check every format rule on `metadata`; MapFormatError names the first broken one."""
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise MapFormatError(
                f"{who}: metadata is missing {', '.join(map(repr, missing))}; a neuron map needs "
                f"all of {', '.join(REQUIRED_METADATA)}"
            )
        not_str = [key for key, value in metadata.items() if not isinstance(value, str)]
        if not_str:
            raise MapFormatError(f"{who}: metadata values must be strings; {some(not_str)} are not")
        if metadata["format"] != FORMAT:
            raise MapFormatError(
                f"{who}: metadata format is {quoted(metadata['format'])}; expected {FORMAT!r}"
            )
        if not metadata["name"]:
            raise MapFormatError(f"{who}: metadata name is empty; a map needs a name")
        integers = {key: _integer(metadata, key, who) for key in _INTEGER_KEYS}
        try:
            alpha = float(metadata["default_alpha"])
        except ValueError:
            alpha = math.nan
        if not math.isfinite(alpha):
            raise MapFormatError(
                f"{who}: metadata default_alpha is {quoted(metadata['default_alpha'])}; "
                "expected a finite number"
            )
        positions = metadata.get("default_positions", DEFAULT_POSITIONS)
        if positions not in POSITIONS:
            raise MapFormatError(
                f"{who}: metadata default_positions is {quoted(positions)}; expected one of "
                f"{', '.join(POSITIONS)}"
            )
        mode = metadata.get("default_mode", DEFAULT_MODE)
        if mode not in MAP_MODES:
            raise MapFormatError(
                f"{who}: metadata default_mode is {quoted(mode)}; expected one of "
                f"{', '.join(MAP_MODES)}"
            )
        extra = {key: value for key, value in metadata.items()
                 if key not in REQUIRED_METADATA and not key.startswith(GATE_METADATA_PREFIX)}
        return cls(
            name=metadata["name"], model=metadata["model"], model_type=metadata["model_type"],
            criterion=metadata["criterion"], default_alpha=alpha, source=metadata["source"],
            created=metadata["created"], extra=MappingProxyType(extra), **integers,
        )


def check_map_name(name: Any) -> None:
    """Refuse a name no map can have, before it reaches any message or file."""
    if not isinstance(name, str) or not name:
        raise MapFormatError(f"a neuron map needs a non-empty string name, got {name!r}")


def new_metadata(
    name: str,
    *,
    num_hidden_layers: int,
    intermediate_size: int,
    hidden_size: int,
    top_k: int,
    model: str,
    model_type: str,
    criterion: str,
    default_alpha: float,
    source: str,
    extra_metadata: Mapping[str, str] | None,
) -> dict[str, str]:
    """The metadata of a map built now; `extra_metadata` may not override a required key."""
    metadata = {
        "format": FORMAT,
        "name": name,
        "model": model,
        "model_type": model_type,
        "num_hidden_layers": str(num_hidden_layers),
        "intermediate_size": str(intermediate_size),
        "hidden_size": str(hidden_size),
        "criterion": criterion,
        "top_k": str(top_k),
        "default_alpha": repr(float(default_alpha)),
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    clash = sorted(set(extra_metadata or {}) & set(metadata))
    if clash:
        raise MapFormatError(
            f"neuron map {name!r}: extra metadata may not override {', '.join(map(repr, clash))}"
        )
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    return metadata


def _integer(metadata: Mapping[str, str], key: str, who: str) -> int:
    """A non-negative integer metadata value below 2**63 (positive unless it is top_k)."""
    value = metadata[key]
    # top_k may read 0 here; an empty map is then refused with its own, clearer message.
    # At most 19 digits, checked before int(): int() raises ValueError on very long
    # strings (leading zeros included).
    if (
        not re.fullmatch(r"[0-9]{1,19}", value)
        or int(value) > MAX_METADATA_INT
        or (int(value) <= 0 and key != "top_k")
    ):
        raise MapFormatError(
            f"{who}: metadata {key} is {quoted(value)}; expected a positive integer "
            "below 2**63"
        )
    return int(value)
