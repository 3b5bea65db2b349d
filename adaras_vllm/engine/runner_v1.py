"""The V1 model runner (``v1/worker/gpu_model_runner.py``; the CPU runner inherits it).

Its batch layout is final right after ``_prepare_inputs`` (reordered, before padding):
the step's ``StepLayout`` is built there and handed to steering and capture. It keeps
each request's ``SamplingParams`` (``self.requests``), and drops finished requests in
``_update_states``.
"""

from __future__ import annotations

from typing import Any

from .patches import Patch
from .runner_steering import attaching_after_load, capture_of, clearing_before
from .runner_steering import running_after, running_before, steering_of
from .step_layout import StepLayout


def _on_step(runner: Any, _out: Any, scheduler_output: Any, num_scheduled_tokens: Any,
             *args: Any, **kwargs: Any) -> None:
    steering, capture = steering_of(runner), capture_of(runner)
    if steering is None and capture is None:
        return
    layout = StepLayout.from_v1(runner, num_scheduled_tokens)
    if steering is not None:
        steering.on_step(layout, lambda r: getattr(runner.requests.get(r), "sampling_params",
                                                   None))
    if capture is not None:
        keys = [capture.key_of(r, runner.requests[r].sampling_params) for r in layout.req_ids]
        capture.on_step(layout, keys, live=set(runner.requests))


def _forget_finished(runner: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> None:
    """V1 drops finished requests in ``_update_states``: drop their steering with them."""
    steering = steering_of(runner)
    if steering is not None:
        steering.forget_all(scheduler_output.finished_req_ids)


filling_after_prepare = running_after(_on_step)
forgetting_finished = running_before(_forget_finished)


_V1 = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
_HOOK = "vLLM gives plugins a per-step metadata hook, as LoRA's punica wrapper has"
PATCHES = (
    Patch(f"{_V1}.load_model", params=("self",), wrap=attaching_after_load,
          why="patch the model's layers once loaded", until="vLLM has a post-load model hook"),
    Patch("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", params=("self",),
          wrap=attaching_after_load, optional=True,
          why="the same: the CPU runner overrides load_model",
          until="vLLM has a post-load model hook"),
    Patch(f"{_V1}._prepare_inputs", params=("self", "scheduler_output", "num_scheduled_tokens"),
          wrap=filling_after_prepare, why="fill the step's buffers where the layout is final",
          until=_HOOK),
    Patch(f"{_V1}._dummy_run", params=("self",), wrap=clearing_before,
          why="dummy runs read zeroed buffers", until=_HOOK),
    Patch(f"{_V1}._update_states", params=("self", "scheduler_output"),
          wrap=forgetting_finished, why="drop finished requests' steering", until=_HOOK),
)
