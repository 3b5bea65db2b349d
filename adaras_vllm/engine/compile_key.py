"""Make the steering patch part of vLLM's compile-cache key.

vLLM keys its (AOT) compile cache on ``VllmConfig.compute_hash()``, which knows nothing
of plugins: a graph traced without the steer op (or with other maps' shapes) could be
loaded and steering silently skipped. With maps loaded, the hash also covers the maps'
fingerprint and the version of this package; capture mode adds its own factor.
"""

from __future__ import annotations

import functools
import hashlib

from .capture import capture_enabled
from .patches import Patch
from .registry import active_registry

_VERSION = "adaras-steering-op/1"
_CAPTURE_VERSION = "adaras-capture-op/1"


def steering_hash_factor() -> str | None:
    """What the patched graph depends on: the maps, and whether capture mode adds its op."""
    registry = active_registry()
    parts = []
    if registry:
        parts.append(f"{_VERSION}:{registry.fingerprint()}")
    if capture_enabled():
        parts.append(_CAPTURE_VERSION)
    return "|".join(parts) or None


def _with_steering_factor(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def compute_hash(self, *args, **kwargs):  # noqa: ANN001, ANN202
        base = original(self, *args, **kwargs)
        factor = steering_hash_factor()
        if factor is None:
            return base
        return hashlib.sha256(f"{base}|{factor}".encode()).hexdigest()[: len(base)]

    return compute_hash


PATCHES = (
    Patch("vllm.config:VllmConfig.compute_hash", params=("self",), wrap=_with_steering_factor,
          why="the compile-cache key covers the maps",
          until="vLLM keys its compile cache on plugin-provided factors"),
)
