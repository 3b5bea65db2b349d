"""Methods added to vLLM's workers, reached with ``collective_rpc``: capture results, what
each worker steers (start-up checks), and gate decisions."""

from __future__ import annotations

from typing import Any

from .adoption import dp_index, node_name
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
    pc = getattr(getattr(worker, "vllm_config", None), "parallel_config", None)
    where = {"node": node_name(), "rank": getattr(worker, "rank", None),
             "dp_rank": dp_index(pc) if pc is not None else None}
    if steering is None:
        return {**where, "installed": False, "layers": [], "tracked_requests": 0,
                "config": None, "map_fingerprints": {}, "self_test": None}
    registry = steering.registry
    return {
        **where,
        "installed": True,
        "layers": [int(layer) for layer in steering.state.steered_layers],
        "maps": list(registry.names),
        "config": registry.config.fingerprint() if registry.config is not None else None,
        "steering_config": registry.config.to_dict() if registry.config is not None else None,
        "map_fingerprints": {n: registry.map_fingerprint(n) for n in registry.names},
        "tracked_requests": steering.num_tracked,
        "gated_maps": list(registry.gated_names) if steering.gate is not None else [],
        "self_test": steering.self_test,
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
#: In every process the plugin loads in, steering or not: a launcher must hear "not
#: installed" from a rank that lacks its maps, not an AttributeError.
STATUS_PATCHES = (
    Patch(f"{_WORKER}.{STATUS_METHOD}", add=steering_status,
          why="what each worker steers, for start-up checks", until=_UNTIL),
)
PATCHES = (
    Patch(f"{_WORKER}.{FETCH_METHOD}", add=fetch_capture, why="capture results by RPC",
          until=_UNTIL),
    *STATUS_PATCHES,
    Patch(f"{_WORKER}.{RESULTS_METHOD}", add=gate_results, why="gate decisions by RPC",
          until=_UNTIL),
)
