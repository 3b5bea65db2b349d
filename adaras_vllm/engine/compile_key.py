"""Make capture mode part of vLLM's compile-cache key.

vLLM keys its (AOT) compile cache on ``VllmConfig.compute_hash()``. Steering needs no
patch for that: its configuration (maps, fingerprints, op version) travels in
``additional_config``, which the hash covers. Capture mode is switched on by an
environment variable, so its op is added to the key here; a graph traced without it is
never loaded for a capturing engine.
"""

from __future__ import annotations

import functools
import hashlib

from .capture import capture_enabled
from .patches import Patch

_CAPTURE_VERSION = "adaras-capture-op/1"


def steering_hash_factor() -> str | None:
    """What a patched graph depends on beyond the engine's config: the capture op."""
    return _CAPTURE_VERSION if capture_enabled() else None


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
          why="the compile-cache key covers capture mode's op",
          until="vLLM keys its compile cache on plugin-provided factors"),
)
