"""The V2 model runner (``v1/worker/gpu/model_runner.py``, vLLM's CUDA default).

It keeps no ``SamplingParams`` per request after admission, so each request's record is
read in ``add_requests``; its batch is final when ``prepare_inputs`` returns its
``InputBatch``, where the step's ``StepLayout`` is built from the device's own layout.
"""

from __future__ import annotations

from typing import Any

from .patches import Patch
from .runner_steering import attaching_after_load, capture_of, clearing_before
from .runner_steering import running_after, running_before, steering_of
from .step_layout import StepLayout


def _remember_new(runner: Any, _out: Any, scheduler_output: Any, *args: Any,
                  **kwargs: Any) -> None:
    """V2 keeps no SamplingParams per request after admission: take them here, after the
    original (it may first remove, and so make us forget, a request being re-added, e.g.
    a streaming-input update)."""
    steering, capture = steering_of(runner), capture_of(runner)
    for new in scheduler_output.scheduled_new_reqs:
        if steering is not None:
            steering.remember(new.req_id, new.sampling_params)
        if capture is not None:
            capture.key_of(new.req_id, new.sampling_params)


def _forget(runner: Any, req_id: str, *args: Any, **kwargs: Any) -> None:
    steering = steering_of(runner)
    if steering is not None:
        steering.forget(req_id)
    capture = capture_of(runner)
    if capture is not None:
        capture.harvest()  # a request that just completed keeps its result
        capture.forget(req_id)


def _on_step(runner: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    steering, capture = steering_of(runner), capture_of(runner)
    if steering is None and capture is None:
        return
    layout = StepLayout.from_v2(runner, batch)
    if steering is not None:
        steering.on_step(layout, lambda r: None)  # records were read in add_requests
    if capture is not None:
        capture.on_step(layout, [capture.key_of(r, None) for r in layout.req_ids])


remembering_new = running_after(_remember_new)
forgetting = running_before(_forget)
filling_after_prepare = running_after(_on_step)


_V2 = "vllm.v1.worker.gpu.model_runner:GPUModelRunner"
_HOOK = "vLLM gives plugins a per-step metadata hook, as LoRA's punica wrapper has"
PATCHES = (
    Patch(f"{_V2}.load_model", params=("self",), wrap=attaching_after_load, optional=True,
          why="patch the model's layers once loaded", until="vLLM has a post-load model hook"),
    Patch(f"{_V2}.add_requests", params=("self", "scheduler_output"), wrap=remembering_new,
          optional=True, why="V2 keeps no sampling params: read each record on admission",
          until="V2 keeps extra_args per request"),
    Patch(f"{_V2}._remove_request", params=("self", "req_id"), wrap=forgetting, optional=True,
          why="drop finished requests' steering", until=_HOOK),
    Patch(f"{_V2}.prepare_inputs", params=("self", "scheduler_output"),
          wrap=filling_after_prepare, optional=True,
          why="fill the step's buffers where the layout is final", until=_HOOK),
    Patch(f"{_V2}._dummy_run", params=("self",), wrap=clearing_before, optional=True,
          why="dummy runs read zeroed buffers", until=_HOOK),
)
