"""The ``vllm.general_plugins`` entry point, and the explicit install ``adaras serve`` uses.

vLLM calls ``register`` in every process it starts (front end, engine cores, workers, API
server processes, Ray actors). In each it installs the few patches that watch for an
engine configuration (``adoption``): the process then steers exactly as the
``additional_config["adaras"]`` of the ``VllmConfig`` it is given says, whatever its own
environment holds, and installs the steering patches the first time a configuration
carries maps. Without maps nothing else changes. A front end whose environment names maps
(``ADARAS_NEURON_MAPS``) installs steering at once and writes the maps into the
configuration of the engine it builds.

vLLM calls the entry point once per process; ``register`` also wraps
``vllm.plugins.load_general_plugins``, which vLLM calls again each time engine arguments
are built, so maps set after a process first loaded its plugins still count at its next
engine. Idempotent.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from .capture import capture_enabled
from .patches import Patch, apply, check_vllm_version
from .registry import steering_enabled

logger = logging.getLogger("vllm.adaras")
_watching = False
_installed = False


def steering_patches() -> tuple[Patch, ...]:
    """Every patch a process that steers (or captures) needs, in the order applied."""
    from . import compile_key, frontend, prefix_cache, runner_v1, runner_v2, scheduler_trim
    from . import self_test, worker_rpcs

    return (*compile_key.PATCHES, *frontend.PATCHES, *prefix_cache.PATCHES,
            *scheduler_trim.PATCHES, *runner_v1.PATCHES, *runner_v2.PATCHES,
            *worker_rpcs.PATCHES, *self_test.PATCHES)


def register() -> None:
    """The entry point: watch for engine configurations that carry steering (always), and
    install steering now when the environment names maps or capture mode. Idempotent."""
    global _watching
    if not _watching:
        if steering_enabled():
            check_vllm_version()  # before anything else: one sentence on another vLLM
        if not _watch_for_engines():
            return
        _watching = True
    if steering_enabled() or capture_enabled():
        install_steering()


def install_steering() -> None:
    """Apply the steering patches in this process (once). Maps come with each engine's
    configuration (``adoption``); nothing here depends on which."""
    global _installed
    if _installed:
        return
    check_vllm_version()
    apply(steering_patches())
    _installed = True
    logger.info(
        "adaras: steering installed in process %d (front-end decision, prefix-cache keys, "
        "scheduler trim for adaptive, model runners, start-up self-test); maps come with "
        "each engine's configuration", os.getpid())


def installed() -> bool:
    """Whether this process has the steering patches (for start-up checks and tests)."""
    return _installed


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


def _watch_for_engines() -> bool:
    """Patches every process gets, maps or not: adopt each engine's steering from its
    configuration, and register again when vLLM loads plugins for a later engine. On a
    vLLM these do not fit, a process without maps keeps plain vLLM and says so once."""
    from . import adoption, worker_rpcs

    try:
        apply((*PLUGIN_PATCHES, *adoption.PATCHES, *worker_rpcs.STATUS_PATCHES))
    except RuntimeError as e:
        logger.warning("adaras: steering is unavailable in this process: %s", e)
        return False
    return True
