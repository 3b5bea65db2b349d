"""The ``vllm.general_plugins`` entry point, and the explicit install ``adaras serve`` uses.

vLLM calls ``register`` in every process it starts (front end, model inspection, engine
core, workers), once per process, whatever the maps: with none configured it changes
nothing. A launcher that learns the maps only after vLLM has loaded its plugins (``adaras
serve`` parses vLLM's arguments first) calls ``register`` again itself once the maps are
in the environment; processes it then forks inherit the patched classes, and spawned ones
run the entry point with the maps already set. Idempotent.

A process may also load vLLM's plugins before any maps are set and configure them later
(a notebook that built one plain engine first; a test session). vLLM never calls the
entry point twice, so ``register`` also wraps ``vllm.plugins.load_general_plugins``,
which vLLM calls again each time engine arguments are built: the next engine of the
process then installs steering. Without maps the wrapper checks one environment
variable and changes nothing.
"""

from __future__ import annotations

import functools
import logging
import os

from .capture import capture_enabled
from .registry import active_registry, steering_enabled

logger = logging.getLogger("vllm.adaras")
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    if not (steering_enabled() or capture_enabled()):
        _register_again_when_engines_start()
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


def _register_again_when_engines_start() -> None:
    """Make vLLM's later ``load_general_plugins()`` calls (one per engine's arguments, which
    import it when called) run ``register`` again, so maps configured after the plugins
    were first loaded still install steering in this process."""
    import vllm.plugins as plugins

    original = plugins.load_general_plugins
    if getattr(original, "_adaras", False):
        return

    @functools.wraps(original)
    def load_general_plugins() -> None:
        original()
        register()

    load_general_plugins._adaras = True  # type: ignore[attr-defined]
    plugins.load_general_plugins = load_general_plugins
