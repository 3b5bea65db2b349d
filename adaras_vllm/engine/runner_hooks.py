"""Hooks into vLLM's model runners: patch the model after it loads, fill the steering
buffers once per step where the batch layout is final.

Two runners exist in vLLM 0.32: V1 (``v1/worker/gpu_model_runner.py``, also the base of
the CPU runner) and V2 (``v1/worker/gpu/model_runner.py``, the default on CUDA). Both are
supported; the fill itself (``SteeringState.fill_requests``) is shared.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from .capture import CaptureState, capture_enabled, install_capture
from .gate import GATE_KEY, RESULTS_METHOD, GateState, install_gate
from .model_patch import install_steering
from .params import SteeringParamError
from .registry import MapRegistry, active_registry
from .state import SteeringState
from .support import check_supported

logger = logging.getLogger("vllm.adaras")

_ATTR = "_adaras_steering"
_CAPTURE_ATTR = "_adaras_capture"


class RunnerSteering:
    """One runner's steering: the loaded maps, the static buffers, per-request params.

    A request's entry lives from its first step until the runner is told it finished, so
    a later request that reuses the id (clients may set ``X-Request-Id``) is read afresh.
    """

    def __init__(self, registry: MapRegistry, state: SteeringState,
                 gate: GateState | None = None) -> None:
        self.registry = registry
        self.state = state
        self.gate = gate
        self._params: dict[str, tuple[float, int, bool]] = {}
        self._gate_keys: dict[str, str] = {}  # adaptive requests: the front end's tag
        self._missing_logged: set[str] = set()

    def remember(self, req_id: str, sampling_params: Any) -> tuple[float, int, bool]:
        """Read a request's resolved steering once (the front end decided it)."""
        if sampling_params is None:
            if req_id not in self._missing_logged:
                self._missing_logged.add(req_id)
                logger.warning("adaras: request %s has no parameters in the runner's table; "
                               "it is not steered", req_id)
            return (0.0, 0, False)
        extra = getattr(sampling_params, "extra_args", None)
        try:
            p = self.registry.parse(extra)
            value = (p.alpha, self.registry.map_id(p.map_name), p.gated and self.gate is not None)
            if value[2]:
                self._gate_keys[req_id] = str((extra or {}).get(GATE_KEY, req_id))
        except SteeringParamError as e:  # only reachable if the front end was bypassed
            logger.warning("adaras: request %s not steered: %s", req_id, e)
            value = (0.0, 0, False)
        self._params[req_id] = value
        return value

    def forget(self, req_id: str) -> None:
        self._params.pop(req_id, None)
        self._gate_keys.pop(req_id, None)
        self._missing_logged.discard(req_id)
        if self.gate is not None:
            self.gate.forget(req_id)

    def forget_all(self, req_ids: Iterable[str]) -> None:
        for r in req_ids:
            self.forget(r)

    def lookup(self, req_ids: Iterable[str], sampling_params_of  # noqa: ANN001
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row (alpha, map id, gated) for the batch, reading new requests once."""
        rows = [
            self._params.get(r) or self.remember(r, sampling_params_of(r)) for r in req_ids
        ]
        if not rows:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        alpha, map_id, gated = zip(*rows)
        return (np.asarray(alpha, np.float32), np.asarray(map_id, np.int64),
                np.asarray(gated, bool))

    def fill(self, req_ids: list[str], sampling_params_of, num_computed: np.ndarray,  # noqa: ANN001
             prompt_len: np.ndarray, query_start_loc, positions) -> None:  # noqa: ANN001
        """One step's steering (and gate) inputs, from per-request values and the batch's
        own device layout."""
        alpha, map_id, gated = self.lookup(req_ids, sampling_params_of)
        factor = None
        if self.gate is not None:
            if gated.any() or self.gate.num_tracked:
                factor = self.gate.on_step(req_ids, lambda r: self._gate_keys.get(r, r),
                                           gated, map_id,
                                           num_computed, prompt_len, query_start_loc,
                                           positions)
            else:
                self.gate.clear_tokens()
        self.state.fill_requests(alpha, map_id, prompt_len, query_start_loc, positions,
                                 alpha_factor=factor)

    @property
    def num_tracked(self) -> int:
        return len(self._params)


def attach(runner: Any, max_tokens: int) -> RunnerSteering | None:
    """Patch the runner's freshly loaded model. No maps configured: do nothing at all."""
    if getattr(runner, _ATTR, None) is not None:
        return getattr(runner, _ATTR)
    registry = active_registry()
    if not registry:
        return None
    check_supported(runner.vllm_config, gated=bool(registry.gated_names))
    state = install_steering(
        runner.get_model(),
        registry.maps,
        runner.model_config.hf_text_config,
        max_tokens=max_tokens,
        dtype=runner.model_config.dtype,
    )
    max_seqs = int(runner.vllm_config.scheduler_config.max_num_seqs)
    gate = install_gate(
        runner.get_model(), registry.maps,
        int(runner.model_config.hf_text_config.intermediate_size),
        max_tokens=max_tokens, max_slots=4 * max_seqs + 16, dtype=runner.model_config.dtype,
    )
    if gate is not None:
        logger.info("adaras: correctness gate(s) of map(s) %s over %d feature(s) on this rank",
                    ", ".join(registry.gated_names), gate.features.shape[1])
    steering = RunnerSteering(registry, state, gate)
    setattr(runner, _ATTR, steering)
    logger.info(
        "adaras: steering layer(s) %s with map(s) %s (default %s), %d neurons on this rank",
        state.steered_layers,
        ", ".join(registry.names),
        registry.names[0],
        state.table.shape[1],
    )
    return steering


def attach_capture(runner: Any, max_tokens: int) -> CaptureState | None:
    """Capture mode (``ADARAS_CAPTURE=1``): patch every layer to sum its ``down_proj`` input.

    Installed after steering, so with both on a layer captures its input before steering.
    """
    if getattr(runner, _CAPTURE_ATTR, None) is not None or not capture_enabled():
        return getattr(runner, _CAPTURE_ATTR, None)
    cfg = runner.model_config.hf_text_config
    slots = int(runner.vllm_config.scheduler_config.max_num_seqs)
    state = install_capture(
        runner.get_model(), int(cfg.num_hidden_layers), max_slots=slots, max_tokens=max_tokens
    )
    setattr(runner, _CAPTURE_ATTR, state)
    logger.info("adaras: capture mode on, %d slots of %s floats", slots,
                tuple(state.sums.shape[::2]))
    return state


def capture_of(runner: Any) -> CaptureState | None:
    return getattr(runner, _CAPTURE_ATTR, None)


def _attach_after_load(method):  # noqa: ANN001, ANN202
    """Patch the model as soon as the runner has loaded it (both runners)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = method(self, *args, **kwargs)
        input_ids = getattr(getattr(self, "input_buffers", None), "input_ids", None)
        padded = int(input_ids.shape[0]) if input_ids is not None else 0
        max_tokens = max(int(self.max_num_tokens), padded)
        attach(self, max_tokens=max_tokens)
        attach_capture(self, max_tokens=max_tokens)
        return out

    return wrapper


def _clear_before(method):  # noqa: ANN001, ANN202
    """Dummy runs call the model directly: make sure nothing is steered or captured then."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
        steering = getattr(self, _ATTR, None)
        if steering is not None:
            steering.state.clear()
            if steering.gate is not None:
                steering.gate.clear_tokens()
        capture = capture_of(self)
        if capture is not None:
            capture.clear_tokens()
        return method(self, *args, **kwargs)

    return wrapper


# ---- V1 runner (CPU and GPU) -------------------------------------------------------


def _v1_fill_after_prepare(method):  # noqa: ANN001, ANN202
    @functools.wraps(method)
    def wrapper(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):  # noqa: ANN001, ANN202
        out = method(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        steering = getattr(self, _ATTR, None)
        if steering is not None:
            batch = self.input_batch
            n = batch.num_reqs
            total = int(np.asarray(num_scheduled_tokens[:n]).sum())
            steering.fill(
                list(batch.req_ids[:n]),
                lambda r: getattr(self.requests.get(r), "sampling_params", None),
                batch.num_computed_tokens_cpu[:n],
                batch.num_prompt_tokens[:n],
                self.query_start_loc.gpu[: n + 1],  # the device's own layout
                self.positions[:total],
            )
        capture = capture_of(self)
        if capture is not None:
            batch = self.input_batch
            n = batch.num_reqs
            req_ids = list(batch.req_ids[:n])
            capture.on_step(
                req_ids,
                [capture.key_of(r, self.requests[r].sampling_params) for r in req_ids],
                np.asarray(num_scheduled_tokens[:n]),
                batch.num_computed_tokens_cpu[:n].copy(),
                batch.num_prompt_tokens[:n].copy(),
                live=set(self.requests),
                query_start_loc=self.query_start_loc.gpu[: n + 1],
                positions=self.positions[: int(np.asarray(num_scheduled_tokens[:n]).sum())],
            )
        return out

    return wrapper


def _v1_forget_finished(method):  # noqa: ANN001, ANN202
    """V1 drops finished requests in ``_update_states``: drop their steering with them."""

    @functools.wraps(method)
    def wrapper(self, scheduler_output, *args, **kwargs):  # noqa: ANN001, ANN202
        steering = getattr(self, _ATTR, None)
        if steering is not None:
            steering.forget_all(scheduler_output.finished_req_ids)
        return method(self, scheduler_output, *args, **kwargs)

    return wrapper


def patch_v1_runners() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    classes: list[type] = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        classes.append(CPUModelRunner)
    except ImportError:  # a CUDA-only build
        pass
    for cls in classes:
        if "load_model" in cls.__dict__ and not getattr(cls.load_model, "_adaras", False):
            cls.load_model = _mark(_attach_after_load(cls.load_model))
    if not getattr(GPUModelRunner._prepare_inputs, "_adaras", False):
        GPUModelRunner._prepare_inputs = _mark(
            _v1_fill_after_prepare(GPUModelRunner._prepare_inputs)
        )
        GPUModelRunner._dummy_run = _mark(_clear_before(GPUModelRunner._dummy_run))
        GPUModelRunner._update_states = _mark(_v1_forget_finished(GPUModelRunner._update_states))


# ---- V2 runner (CUDA default) ------------------------------------------------------


def _v2_remember_new(method):  # noqa: ANN001, ANN202
    """V2 keeps no SamplingParams per request after admission: take them here."""

    @functools.wraps(method)
    def wrapper(self, scheduler_output, *args, **kwargs):  # noqa: ANN001, ANN202
        # After the original: it may first remove (and so make us forget) a request
        # that is being re-added, e.g. a streaming-input update.
        out = method(self, scheduler_output, *args, **kwargs)
        steering = getattr(self, _ATTR, None)
        capture = capture_of(self)
        for new in scheduler_output.scheduled_new_reqs:
            if steering is not None:
                steering.remember(new.req_id, new.sampling_params)
            if capture is not None:
                capture.key_of(new.req_id, new.sampling_params)
        return out

    return wrapper


def _v2_forget(method):  # noqa: ANN001, ANN202
    @functools.wraps(method)
    def wrapper(self, req_id, *args, **kwargs):  # noqa: ANN001, ANN202
        steering = getattr(self, _ATTR, None)
        if steering is not None:
            steering.forget(req_id)
        capture = capture_of(self)
        if capture is not None:
            capture.harvest()  # a request that just completed keeps its result
            capture.forget(req_id)
        return method(self, req_id, *args, **kwargs)

    return wrapper


def _v2_fill_after_prepare(method):  # noqa: ANN001, ANN202
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
        batch = method(self, *args, **kwargs)
        steering = getattr(self, _ATTR, None)
        if steering is not None:
            n = batch.num_reqs
            rows = batch.idx_mapping_np[:n]
            total = int(batch.num_tokens)
            steering.fill(
                list(batch.req_ids[:n]),
                lambda r: None,  # V2 keeps no params: remembered in add_requests
                batch.num_computed_tokens_np[:n],
                self.req_states.prompt_len.np[rows],  # not prefill_len: it changes on preemption
                batch.query_start_loc[: n + 1],  # the device's (adaptive verification edits it)
                batch.positions[:total],
            )
        capture = capture_of(self)
        if capture is not None:
            n = batch.num_reqs
            req_ids = list(batch.req_ids[:n])
            rows = batch.idx_mapping_np[:n]
            capture.on_step(
                req_ids,
                [capture.key_of(r, None) for r in req_ids],
                np.diff(batch.query_start_loc_np[: n + 1]),
                batch.num_computed_tokens_np[:n].copy(),
                self.req_states.prompt_len.np[rows].copy(),
                query_start_loc=batch.query_start_loc[: n + 1],
                positions=batch.positions[: int(batch.num_tokens)],
            )
        return batch

    return wrapper


def patch_v2_runner() -> None:
    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner
    except ImportError:
        return
    if getattr(V2Runner.prepare_inputs, "_adaras", False):
        return
    V2Runner.load_model = _mark(_attach_after_load(V2Runner.load_model))
    V2Runner.add_requests = _mark(_v2_remember_new(V2Runner.add_requests))
    V2Runner._remove_request = _mark(_v2_forget(V2Runner._remove_request))
    V2Runner.prepare_inputs = _mark(_v2_fill_after_prepare(V2Runner.prepare_inputs))
    V2Runner._dummy_run = _mark(_clear_before(V2Runner._dummy_run))


def _mark(fn):  # noqa: ANN001, ANN202
    fn._adaras = True
    return fn


# ---- worker RPCs: capture results, steering status ----------------------------------

STATUS_METHOD = "adaras_steering_status"


def _fetch_capture(worker: Any) -> dict[str, dict[str, Any]]:
    """``LLM.collective_rpc("adaras_capture_fetch")``: this rank's finished sums by key."""
    capture = capture_of(getattr(worker, "model_runner", None))
    if capture is None:
        raise RuntimeError(
            "adaras capture mode is off in this engine: set ADARAS_CAPTURE=1 before it starts"
        )
    return capture.fetch()


def _steering_status(worker: Any) -> dict[str, Any]:
    """``collective_rpc("adaras_steering_status")``: what this worker steers, so a launcher
    can refuse to serve when maps are configured but a worker has no steering installed."""
    steering = getattr(getattr(worker, "model_runner", None), _ATTR, None)
    if steering is None:
        return {"installed": False, "layers": [], "tracked_requests": 0}
    return {
        "installed": True,
        "layers": [int(layer) for layer in steering.state.steered_layers],
        "maps": list(steering.registry.names),
        "tracked_requests": steering.num_tracked,
        "gated_maps": list(steering.registry.gated_names) if steering.gate is not None else [],
    }


def _gate_results(worker: Any, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``collective_rpc("adaras_gate_results", args=(keys,))``: pop finished gate
    decisions by the tag the front end gave each adaptive request (all when ``keys`` is
    None). Every tensor-parallel rank holds the same values."""
    steering = getattr(getattr(worker, "model_runner", None), _ATTR, None)
    if steering is None or steering.gate is None:
        return {}
    return steering.gate.fetch(keys)


def patch_worker_rpcs() -> None:
    from vllm.v1.worker.worker_base import WorkerBase

    from .capture import FETCH_METHOD

    if not hasattr(WorkerBase, FETCH_METHOD):
        setattr(WorkerBase, FETCH_METHOD, _fetch_capture)
    if not hasattr(WorkerBase, STATUS_METHOD):
        setattr(WorkerBase, STATUS_METHOD, _steering_status)
    if not hasattr(WorkerBase, RESULTS_METHOD):
        setattr(WorkerBase, RESULTS_METHOD, _gate_results)
