"""One model runner's steering: attached when the model loads, filled once per step.

Both runners (V1: ``runner_v1``, V2: ``runner_v2``) hold one ``RunnerSteering`` and, in
capture mode, one ``CaptureState``; each builds a ``StepLayout`` per step and hands it to
``on_step``. A request's steering is the record the front end resolved
(``ResolvedSteering``), read once per request, never re-decided here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .capture import CaptureState, capture_enabled, install_capture
from .gate_runtime import GateState, install_gate
from .model_patch import install_steering
from .params import POSITIONS, steered_spans
from .registry import MapRegistry, active_registry
from .resolved import ResolvedSteering
from .state import SteeringState
from .step_layout import StepLayout
from .support import check_supported

logger = logging.getLogger("vllm.adaras")

STEERING_ATTR = "_adaras_steering"
CAPTURE_ATTR = "_adaras_capture"


class RunnerSteering:
    """The loaded maps, the static buffers, and each live request's resolved record.

    A request's entry lives from its first step until the runner is told it finished, so
    a later request that reuses the id (clients may set ``X-Request-Id``) is read afresh.
    """

    def __init__(self, registry: MapRegistry, state: SteeringState,
                 gate: GateState | None = None) -> None:
        self.registry = registry
        self.state = state
        self.gate = gate
        self._records: dict[str, ResolvedSteering] = {}
        self._missing_logged: set[str] = set()
        self.self_testing = False  # the start-up self-test fills the buffers itself
        self.self_test: dict[str, Any] | None = None  # its report

    def remember(self, req_id: str, sampling_params: Any) -> ResolvedSteering:
        """Read a request's resolved steering once (the front end decided it)."""
        if sampling_params is None:
            if req_id not in self._missing_logged:
                self._missing_logged.add(req_id)
                logger.warning("adaras: request %s has no parameters in the runner's table; "
                               "it is not steered", req_id)
            return ResolvedSteering.unsteered(self.registry.names)
        record = ResolvedSteering.from_extra_args(
            getattr(sampling_params, "extra_args", None), self.registry.names,
            self.registry.gated_names)
        self._records[req_id] = record
        return record

    def forget(self, req_id: str) -> None:
        self._records.pop(req_id, None)
        self._missing_logged.discard(req_id)
        if self.gate is not None:
            self.gate.forget(req_id)

    def forget_all(self, req_ids: Iterable[str]) -> None:
        for r in req_ids:
            self.forget(r)

    def records(self, req_ids: Iterable[str],
                sampling_params_of: Callable[[str], Any]) -> list[ResolvedSteering]:
        """Each row's record, reading a new request's parameters once."""
        return [self._records.get(r) or self.remember(r, sampling_params_of(r))
                for r in req_ids]

    def on_step(self, layout: StepLayout, sampling_params_of: Callable[[str], Any]) -> None:
        """One step's steering (and gate) inputs: per-request values from the records,
        per-token ones from the layout, on the device."""
        records = self.records(layout.req_ids, sampling_params_of)
        n = len(records)
        alpha = np.fromiter((r.alpha for r in records), np.float32, n)
        map_id = np.fromiter((r.map_id for r in records), np.int64, n)
        factor = None
        if self.gate is not None:
            gated = np.fromiter((r.gated for r in records), bool, n)
            if gated.any() or self.gate.num_tracked:
                factor = self.gate.on_step(layout, self._gate_key_of, gated, map_id)
            else:
                self.gate.clear_tokens()
        first, last = steered_spans(
            np.fromiter((POSITIONS.index(r.positions) for r in records), np.int64, n),
            np.asarray(layout.prompt_len, np.int64))
        self.state.fill_requests(alpha, map_id, layout.prompt_len, layout.query_start_loc,
                                 layout.positions, alpha_factor=factor,
                                 first_steered=first, last_steered=last)

    def _gate_key_of(self, req_id: str) -> str:
        """The tag the front end gave an adaptive request (its id if it has none)."""
        record = self._records.get(req_id)
        return req_id if record is None or record.gate_key is None else record.gate_key

    def clear(self) -> None:
        """Nothing steered or pooled (dummy runs call the model directly)."""
        self.state.clear()
        if self.gate is not None:
            self.gate.clear_tokens()

    @property
    def num_tracked(self) -> int:
        return len(self._records)


def steering_of(runner: Any) -> RunnerSteering | None:
    return getattr(runner, STEERING_ATTR, None)


def capture_of(runner: Any) -> CaptureState | None:
    return getattr(runner, CAPTURE_ATTR, None)


def attach(runner: Any, max_tokens: int) -> RunnerSteering | None:
    """Patch the runner's freshly loaded model. No maps configured: do nothing at all."""
    if steering_of(runner) is not None:
        return steering_of(runner)
    registry = active_registry()
    if not registry:
        return None
    check_supported(runner.vllm_config, gated=bool(registry.gated_names))
    text_config = runner.model_config.hf_text_config
    state = install_steering(runner.get_model(), registry.maps, text_config,
                             max_tokens=max_tokens, dtype=runner.model_config.dtype)
    max_seqs = int(runner.vllm_config.scheduler_config.max_num_seqs)
    gate = install_gate(runner.get_model(), registry.maps, int(text_config.intermediate_size),
                        max_tokens=max_tokens, max_slots=4 * max_seqs + 16,
                        dtype=runner.model_config.dtype)
    if gate is not None:
        logger.info("adaras: correctness gate(s) of map(s) %s over %d feature(s) on this rank",
                    ", ".join(registry.gated_names), gate.features.shape[1])
    steering = RunnerSteering(registry, state, gate)
    setattr(runner, STEERING_ATTR, steering)
    logger.info("adaras: steering layer(s) %s with map(s) %s (default %s), %d neurons on this "
                "rank", state.steered_layers, ", ".join(registry.names), registry.names[0],
                state.table.shape[1])
    return steering


def attach_capture(runner: Any, max_tokens: int) -> CaptureState | None:
    """Capture mode (``ADARAS_CAPTURE=1``): patch every layer to sum its ``down_proj`` input.

    Installed after steering, so with both on a layer captures its input before steering.
    """
    if capture_of(runner) is not None or not capture_enabled():
        return capture_of(runner)
    cfg = runner.model_config.hf_text_config
    slots = int(runner.vllm_config.scheduler_config.max_num_seqs)
    state = install_capture(runner.get_model(), int(cfg.num_hidden_layers), max_slots=slots,
                            max_tokens=max_tokens)
    setattr(runner, CAPTURE_ATTR, state)
    logger.info("adaras: capture mode on, %d slots of %s floats", slots,
                tuple(state.sums.shape[::2]))
    return state


Method = Callable[..., Any]


def running_after(hook: Callable[..., None]) -> Callable[[Method], Method]:
    """A runner patch: the method, then ``hook(runner, result, *args, **kwargs)``."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
            out = method(self, *args, **kwargs)
            hook(self, out, *args, **kwargs)
            return out

        return wrapper

    return wrap


def running_before(hook: Callable[..., None]) -> Callable[[Method], Method]:
    """A runner patch: ``hook(runner, *args, **kwargs)``, then the method."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
            hook(self, *args, **kwargs)
            return method(self, *args, **kwargs)

        return wrapper

    return wrap


def _attach_all(runner: Any, _loaded: Any, *args: Any, **kwargs: Any) -> None:
    """Patch the model as soon as the runner has loaded it (both runners)."""
    input_ids = getattr(getattr(runner, "input_buffers", None), "input_ids", None)
    padded = int(input_ids.shape[0]) if input_ids is not None else 0
    max_tokens = max(int(runner.max_num_tokens), padded)
    attach(runner, max_tokens=max_tokens)
    attach_capture(runner, max_tokens=max_tokens)


def _clear_all(runner: Any, *args: Any, **kwargs: Any) -> None:
    """Dummy runs call the model directly: make sure nothing is steered or captured then."""
    steering = steering_of(runner)
    if steering is not None and not steering.self_testing:
        steering.clear()
    capture = capture_of(runner)
    if capture is not None:
        capture.clear_tokens()


attaching_after_load = running_after(_attach_all)
clearing_before = running_before(_clear_all)
