"""Each vLLM process adopts its steering from the engine configuration it is given.

Four places see a ``VllmConfig`` enter a process before any request can: the launcher
builds it (``EngineArgs.create_engine_config``), the front end builds its
``InputProcessor`` from it (whichever way the engine was made), the engine core builds
its scheduler from it, each worker is constructed with it. These patches are installed in
every process the plugin loads in, with or without maps, so a process started with no
``ADARAS_*`` variable (a Ray actor, an API server process) steers exactly as its engine
says, and a process whose environment names other maps ignores them.

The front end is the one place environment variables still count: an engine built
without ``additional_config["adaras"]`` gets the maps ``ADARAS_NEURON_MAPS`` names,
written into its configuration before it is shipped to the engine core. A headless node
(multi-node data parallel) builds its own configuration from its own arguments: vLLM
sends it nothing of the front end's, so it must be given the same ``--additional-config``
(or ``adaras serve`` flags); ``adaras serve``'s start-up check compares every rank.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import weakref
from typing import Any

from .patches import Patch
from .registry import FRONT_END_ATTR, MapRegistry, active_registry, adopt_registry
from .steering_config import SteeringConfig, SteeringConfigError, carry_in, config_of
from .support import check_supported

logger = logging.getLogger("vllm.adaras")


def node_name() -> str:
    return socket.gethostname()


def dp_index(parallel_config: Any) -> int:
    """This engine's data-parallel rank. vLLM runs the ranks of a dense model as separate
    engines of DP size 1 and keeps the rank in ``data_parallel_index``."""
    index = getattr(parallel_config, "data_parallel_index", None)
    return int(parallel_config.data_parallel_rank if index is None else index)


#: The schedulers and workers of this process that adopted the current registry.
_adopters: weakref.WeakSet = weakref.WeakSet()


def adopt(vllm_config: Any, where: str, owner: object | None = None) -> MapRegistry:
    """Make this process steer as ``vllm_config`` says (not at all when it has no
    ``adaras`` entry): load and check every map, install the patches if needed.

    The engine core and the workers keep one registry per process; ``owner`` (the
    scheduler or worker adopting) is remembered so that a second engine with *other*
    steering is refused while the first still lives in this process (only possible with
    vLLM's in-process engines, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    config = config_of(vllm_config)
    if any(other is not owner for other in _adopters):
        held = active_registry().config
        if held != config:
            raise SteeringConfigError(
                f"adaras: {where}: this process already runs an engine that steers with "
                f"{', '.join(held.names) if held else 'no maps'}; an engine with other "
                "steering cannot share its process: keep vLLM's engine processes "
                "(VLLM_ENABLE_V1_MULTIPROCESSING=1, the default)")
    registry = _load(config, where)
    adopt_registry(registry)
    if owner is not None:
        _adopters.add(owner)
    return registry


def _load(config: SteeringConfig | None, where: str) -> MapRegistry:
    if config is None:
        return MapRegistry([])
    registry = MapRegistry.from_config(config, where)
    from .plugin import install_steering

    install_steering()
    return registry


def _front_end_config(vllm_config: Any) -> SteeringConfig | None:
    """The engine's steering: its own ``adaras`` entry if given, else the environment's,
    written into the configuration so that every other process gets it."""
    given = config_of(vllm_config)
    if given is not None:
        return given
    from_env = SteeringConfig.from_env()
    if from_env is not None:
        carry_in(vllm_config, from_env)
    return from_env


def _carrying_steering(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):  # noqa: ANN001, ANN202
        vllm_config = original(self, *args, **kwargs)
        config = _front_end_config(vllm_config)
        headless = kwargs.get("headless", args[1] if len(args) > 1 else False)
        if config is not None and headless:  # no front end here: check the files now
            config.load_maps(f"the headless engine launcher (pid {os.getpid()}) on node "
                             f"{node_name()}")
        return vllm_config

    return create_engine_config


def _deciding_with_the_engines_maps(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def __init__(self, vllm_config, *args, **kwargs):  # noqa: ANN001, ANN202
        # Before the engine client ships the config to the engine core (AsyncLLM and
        # LLMEngine build their InputProcessor first), whichever way it was built.
        config = _front_end_config(vllm_config)
        registry = _load(config, f"the front end (pid {os.getpid()}) on node {node_name()}")
        if registry:
            registry.check_defaults()
            model_config = vllm_config.model_config
            for m in registry.maps:  # the mismatch itself, not a failed engine start
                m.validate(model_config.hf_text_config)
                warning = m.model_mismatch(model_config.model)
                if warning:
                    logger.warning("adaras: %s", warning)
            check_supported(vllm_config, gated=bool(registry.gated_names))
        setattr(self, FRONT_END_ATTR, registry)
        original(self, vllm_config, *args, **kwargs)

    return __init__


def _adopting_in_engine_core(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def __init__(self, vllm_config, *args, **kwargs):  # noqa: ANN001, ANN202
        dp = dp_index(vllm_config.parallel_config)
        adopt(vllm_config, f"the engine core of DP rank {dp} on node {node_name()}", self)
        original(self, vllm_config, *args, **kwargs)

    return __init__


def _adopting_in_worker(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def __init__(self, vllm_config, local_rank, rank, *args, **kwargs):  # noqa: ANN001, ANN202
        dp = dp_index(vllm_config.parallel_config)
        adopt(vllm_config, f"worker rank {rank} (local rank {local_rank}) of DP rank {dp} on "
                           f"node {node_name()}", self)
        original(self, vllm_config, local_rank, rank, *args, **kwargs)

    return __init__


_UNTIL = "vLLM gives plugins a hook where a process receives its VllmConfig"
PATCHES = (
    Patch("vllm.engine.arg_utils:EngineArgs.create_engine_config", params=("self",),
          wrap=_carrying_steering,
          why="the steering the environment names is written into the engine's own config",
          until="vLLM lets plugins contribute to additional_config when it is built"),
    Patch("vllm.v1.engine.input_processor:InputProcessor.__init__",
          params=("self", "vllm_config"), wrap=_deciding_with_the_engines_maps,
          why="each engine's front end decides with its own maps, checked against the model",
          until="vLLM validates plugin configuration against the model"),
    Patch("vllm.v1.core.sched.scheduler:Scheduler.__init__", params=("self", "vllm_config"),
          wrap=_adopting_in_engine_core,
          why="the engine core steers (prefix-cache keys, trim) as its config says",
          until=_UNTIL),
    Patch("vllm.v1.worker.worker_base:WorkerBase.__init__",
          params=("self", "vllm_config", "local_rank", "rank"), wrap=_adopting_in_worker,
          why="each worker loads and checks the maps its config names", until=_UNTIL),
)
