"""Methods added to vLLM's workers, reached with ``collective_rpc``: capture results, what
each worker steers (start-up checks), and gate decisions."""

from __future__ import annotations

from typing import Any

from .capture import FETCH_METHOD
from .gate_runtime import RESULTS_METHOD
from .patches import Patch
from .runner_steering import capture_of, steering_of

STATUS_METHOD = "adaras_steering_status"


def fetch_capture(worker: Any) -> dict[str, dict[str, Any]]:
    """``LLM.collective_rpc("adaras_capture_fetch")``: this rank's finished sums by key."""
    capture = capture_of(getattr(worker, "model_runner", None))
    if capture is None:
        raise RuntimeError(
            "adaras capture mode is off in this engine: set ADARAS_CAPTURE=1 before it starts"
        )
    return capture.fetch()


def steering_status(worker: Any) -> dict[str, Any]:
    """``collective_rpc("adaras_steering_status")``: what this worker steers, so a launcher
    can refuse to serve when maps are configured but a worker has no steering installed."""
    steering = steering_of(getattr(worker, "model_runner", None))
    if steering is None:
        return {"installed": False, "layers": [], "tracked_requests": 0}
    return {
        "installed": True,
        "layers": [int(layer) for layer in steering.state.steered_layers],
        "maps": list(steering.registry.names),
        "tracked_requests": steering.num_tracked,
        "gated_maps": list(steering.registry.gated_names) if steering.gate is not None else [],
    }


def gate_results(worker: Any, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``collective_rpc("adaras_gate_results", args=(keys,))``: pop finished gate
    decisions by the tag the front end gave each adaptive request (all when ``keys`` is
    None). Every tensor-parallel rank holds the same values."""
    steering = steering_of(getattr(worker, "model_runner", None))
    if steering is None or steering.gate is None:
        return {}
    return steering.gate.fetch(keys)


_WORKER = "vllm.v1.worker.worker_base:WorkerBase"
_UNTIL = "vLLM offers plugins worker extensions without --worker-extension-cls"
PATCHES = (
    Patch(f"{_WORKER}.{FETCH_METHOD}", add=fetch_capture, why="capture results by RPC",
          until=_UNTIL),
    Patch(f"{_WORKER}.{STATUS_METHOD}", add=steering_status,
          why="what each worker steers, for start-up checks", until=_UNTIL),
    Patch(f"{_WORKER}.{RESULTS_METHOD}", add=gate_results, why="gate decisions by RPC",
          until=_UNTIL),
)
