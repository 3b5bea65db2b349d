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


def patch_compile_hash() -> None:
    from vllm.config import VllmConfig

    original = VllmConfig.compute_hash
    if getattr(original, "_adaras", False):
        return

    @functools.wraps(original)
    def compute_hash(self, *args, **kwargs):  # noqa: ANN001, ANN202
        base = original(self, *args, **kwargs)
        factor = steering_hash_factor()
        if factor is None:
            return base
        return hashlib.sha256(f"{base}|{factor}".encode()).hexdigest()[: len(base)]

    compute_hash._adaras = True
    VllmConfig.compute_hash = compute_hash
