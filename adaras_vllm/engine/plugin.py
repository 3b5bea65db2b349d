"""The ``vllm.general_plugins`` entry point.

vLLM calls it in every process (front end, model inspection, engine core, workers), so
it must be idempotent. With no maps configured and capture mode off it changes nothing.
"""

from __future__ import annotations

import logging

from .capture import capture_enabled
from .registry import ENV_VAR, active_registry, steering_enabled

logger = logging.getLogger("vllm.adaras")
_registered = False


def register() -> None:
    global _registered
    if _registered or not (steering_enabled() or capture_enabled()):
        return
    active_registry()  # load (and check) the maps now: a bad path fails at start-up
    from .compile_key import patch_compile_hash
    from .frontend import patch_input_validation
    from .prefix_cache import patch_prefix_cache_keys
    from .runner_hooks import patch_v1_runners, patch_v2_runner, patch_worker_fetch

    patch_compile_hash()
    patch_input_validation()
    patch_prefix_cache_keys()
    patch_v1_runners()
    patch_v2_runner()
    patch_worker_fetch()
    _registered = True
    logger.debug("adaras: plugin registered (%s set)", ENV_VAR)
