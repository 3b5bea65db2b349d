"""The ``vllm.general_plugins`` entry point, and the explicit install ``adaras serve`` uses.

vLLM calls ``register`` in every process it starts (front end, model inspection, engine
core, workers), once per process, whatever the maps: with none configured it changes
nothing. A launcher that learns the maps only after vLLM has loaded its plugins (``adaras
serve`` parses vLLM's arguments first) calls ``register`` again itself once the maps are
in the environment; processes it then forks inherit the patched classes, and spawned ones
run the entry point with the maps already set. Idempotent.
"""

from __future__ import annotations

import logging
import os

from .capture import capture_enabled
from .registry import active_registry, steering_enabled

logger = logging.getLogger("vllm.adaras")
_registered = False


def register() -> None:
    global _registered
    if _registered or not (steering_enabled() or capture_enabled()):
        return
    registry = active_registry()  # load (and check) the maps now: a bad path fails at start-up
    registry.check_defaults()
    from .compile_key import patch_compile_hash
    from .frontend import patch_input_validation
    from .prefix_cache import patch_prefix_cache_keys
    from .runner_hooks import patch_v1_runners, patch_v2_runner, patch_worker_rpcs
    from .scheduler_trim import patch_scheduler

    patch_compile_hash()
    patch_input_validation()
    patch_prefix_cache_keys()
    patch_scheduler()
    patch_v1_runners()
    patch_v2_runner()
    patch_worker_rpcs()
    _registered = True
    logger.info(
        "adaras: steering installed in process %d (maps: %s; front-end decision, prefix-cache "
        "keys, scheduler trim for adaptive, model runners); layers are patched when a worker "
        "loads the model",
        os.getpid(), ", ".join(registry.names) or "none (capture mode)",
    )


def installed() -> bool:
    """Whether this process has the steering patches (for start-up checks and tests)."""
    return _registered
