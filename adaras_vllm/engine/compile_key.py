"""Make the steering patch part of vLLM's compile-cache key.

vLLM keys its (AOT) compile cache on ``VllmConfig.compute_hash()``, which knows nothing
of plugins: a graph traced without the steer op (or with other maps' shapes) could be
loaded and steering silently skipped. With maps loaded, the hash also covers the maps'
fingerprint and the version of this package.
"""

from __future__ import annotations

import functools
import hashlib

from .registry import active_registry

_VERSION = "adaras-steering-op/1"


def steering_hash_factor() -> str | None:
    registry = active_registry()
    if not registry:
        return None
    return f"{_VERSION}:{registry.fingerprint()}"


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
