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
from collections.abc import Callable

from .capture import capture_enabled
from .patches import Patch, apply, check_vllm_version
from .registry import active_registry, steering_enabled

logger = logging.getLogger("vllm.adaras")
_registered = False


def steering_patches() -> tuple[Patch, ...]:
    """Every patch a process with maps (or capture mode) needs, in the order applied."""
    from . import compile_key, frontend, prefix_cache, runner_v1, runner_v2, scheduler_trim
    from . import worker_rpcs

    return (*compile_key.PATCHES, *frontend.PATCHES, *prefix_cache.PATCHES,
            *scheduler_trim.PATCHES, *runner_v1.PATCHES, *runner_v2.PATCHES,
            *worker_rpcs.PATCHES)


def register() -> None:
    global _registered
    if _registered:
        return
    if not (steering_enabled() or capture_enabled()):
        _register_again_when_engines_start()
        return
    check_vllm_version()  # before loading anything: one sentence on another vLLM
    registry = active_registry()  # load (and check) the maps now: a bad path fails at start-up
    registry.check_defaults()
    apply(steering_patches())
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


def _registering_again(load_general_plugins: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(load_general_plugins)
    def wrapper() -> None:
        load_general_plugins()
        register()

    return wrapper


PLUGIN_PATCHES = (
    Patch("vllm.plugins:load_general_plugins", wrap=_registering_again,
          why="maps set after a process loaded its plugins still install at its next engine",
          until="vLLM calls general plugins once per engine, or has a per-engine plugin hook"),
)


def _register_again_when_engines_start() -> None:
    """Make vLLM's later ``load_general_plugins()`` calls (one per engine's arguments, which
    import it when called) run ``register`` again, so maps configured after the plugins
    were first loaded still install steering in this process. On a vLLM these patches do
    not fit, a process without maps keeps plain vLLM and says so once."""
    try:
        apply(PLUGIN_PATCHES)
    except RuntimeError as e:
        logger.warning("adaras: steering is unavailable in this process: %s", e)
