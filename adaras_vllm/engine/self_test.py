"""The start-up self-test: each worker proves its steer op changes what the model computes.

Run once per worker after vLLM has compiled, warmed up and captured its graphs, through
the runner's own dummy run, so it exercises exactly the path requests take (eager,
``torch.compile``, CUDA graphs). Dummy runs write no KV and touch no request. Steering
that a graph silently dropped, or a rank whose op does nothing, refuses to start: no
server here can answer "steered" while not steering.

Tensor-parallel ranks sum their ``down_proj`` outputs, so one rank's change shows on every
rank. The ranks of a group therefore run the same sequence of dummy runs together (a
baseline, then one run per rank in which only that rank steers), and each rank judges
its own turn.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from .adoption import dp_index, node_name
from .patches import Patch
from .runner_steering import steering_of

logger = logging.getLogger("vllm.adaras")

#: Tokens per dummy run, and the largest per-neuron shift each makes.
SELF_TEST_TOKENS = 4
SELF_TEST_SHIFT = 4.0


class SteeringSelfTestError(RuntimeError):
    """This worker's steering does not change the model's computation."""


def _tp_group() -> tuple[int, int]:
    try:
        from vllm.distributed import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )

        return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
    except (AssertionError, RuntimeError):  # no model-parallel group (a bare runner)
        return 0, 1


def _hidden(out: Any, n: int) -> torch.Tensor | None:
    """This stage's output of a dummy run, copied (graph outputs are reused buffers)."""
    if isinstance(out, tuple):
        out = out[0]
    if out is not None and not isinstance(out, torch.Tensor):
        out = out.tensors.get("hidden_states") if hasattr(out, "tensors") else None
    return None if out is None else out[:n].detach().clone()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.nan_to_num(), b.nan_to_num())


def _judge(runner: Any, state: Any, n: int, rank: int, size: int, usable: list[int],
           peak: torch.Tensor, **kind: Any) -> tuple[bool, bool | None, bool]:
    """One layout of dummy runs: (stable, this rank's turn changed the output, has output).

    With attention (its output is otherwise left unwritten, and differs run to run);
    dummy runs' slots are -1, so no KV is written."""
    def run() -> torch.Tensor | None:
        return _hidden(runner._dummy_run(n, force_attention=True, **kind), n)

    base, again = run(), run()
    if base is None or again is None:
        return False, None, False
    stable = _same(base, again)
    changed: list[bool] = []
    for turn in range(size):  # every rank runs every turn: tensor-parallel ranks in step
        if turn == rank and usable:
            state.fill_tokens(SELF_TEST_SHIFT / float(peak[usable[0]]), usable[0], n)
        else:
            state.clear()
        out = run()
        changed.append(out is not None and not _same(out, base))
    state.clear()
    return stable, (changed[rank] if usable else None), True


def run_self_test(runner: Any, where: str) -> dict[str, Any]:
    """Steer ``SELF_TEST_TOKENS`` dummy tokens, as a prefill chunk and as a decode batch,
    and check the output changes; raise ``SteeringSelfTestError`` naming ``where`` if it
    does not. Returns the report."""
    steering = steering_of(runner)
    if steering is None:
        return {"ran": False, "reason": "no steering in this worker"}
    if steering.self_test is not None:
        return steering.self_test
    state = steering.state
    rank, size = _tp_group()
    max_seqs = int(getattr(getattr(runner, "scheduler_config", None), "max_num_seqs", 1) or 1)
    n = max(1, min(SELF_TEST_TOKENS, state.max_tokens, max_seqs))
    peak = state.table.abs().amax(dim=1) if state.table.numel() else torch.zeros(0)
    usable = [m for m in range(int(peak.shape[0])) if float(peak[m]) > 0]
    steering.clear()
    steering.self_testing = True
    results = {}
    try:
        # a chunk (the compiled/piecewise path) and a uniform decode batch (the decode
        # graph every generated token replays)
        for name, kind in (("prefill", {}), ("decode", {"uniform_decode": True})):
            results[name] = _judge(runner, state, n, rank, size, usable, peak, **kind)
    finally:
        state.clear()
        steering.self_testing = False
    report: dict[str, Any] = {"tokens": n, "tp_rank": rank, "steered": bool(usable),
                              "map": steering.registry.names[usable[0]] if usable else None}
    if not any(has_output for _, _, has_output in results.values()):
        # a V2 runner's non-last pipeline stage returns no hidden states: nothing to see
        report.update(ran=False, skipped="this pipeline stage's dummy run returns no output")
        logger.warning("adaras: %s: steering self-test skipped: %s", where, report["skipped"])
    elif not all(stable for stable, _, _ in results.values()):
        report.update(ran=False, reason="two identical dummy runs gave different outputs")
        logger.warning("adaras: %s: steering self-test could not judge: %s", where,
                       report["reason"])
    else:
        report.update(ran=True, changed={k: v for k, (_, v, _) in results.items()})
        failed = [k for k, (_, v, _) in results.items() if usable and not v]
        if failed:
            raise SteeringSelfTestError(
                f"adaras: {where}: steering self-test failed: steering {n} token(s) with "
                f"map {report['map']!r} (largest shift {SELF_TEST_SHIFT:g}) left this "
                f"rank's model output unchanged in the {' and '.join(failed)} layout(s), so "
                "the steer op is not running in this engine's forward (graph mode "
                f"{_graph_mode(runner)}); refusing to start rather than serve unsteered "
                "answers as steered")
        logger.info("adaras: %s: steering self-test passed (%s)", where,
                    "output changed, prefill and decode" if usable
                    else "no mapped neuron on this rank")
    steering.self_test = report
    return report


def _graph_mode(runner: Any) -> str:
    cfg = getattr(getattr(runner, "vllm_config", None), "compilation_config", None)
    if cfg is None:
        return "unknown"
    mode, graphs = getattr(cfg, "mode", "?"), getattr(cfg, "cudagraph_mode", "?")
    return f"compile mode {getattr(mode, 'name', mode)}, CUDA graphs {getattr(graphs, 'name', graphs)}"


def _test_worker(worker: Any) -> None:
    runner = getattr(worker, "model_runner", None)
    if steering_of(runner) is not None:
        pc = worker.vllm_config.parallel_config
        where = (f"worker rank {getattr(worker, 'rank', '?')} of DP rank {dp_index(pc)} on "
                 f"node {node_name()}")
        run_self_test(runner, where)


def _testing_after_warm_up(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def compile_or_warm_up_model(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = original(self, *args, **kwargs)
        _test_worker(self)
        return out

    return compile_or_warm_up_model


def _testing_before_jit_monitor(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def _maybe_activate_jit_monitor(self, *args, **kwargs):  # noqa: ANN001, ANN202
        _test_worker(self)  # graphs captured, warm-up done; before JIT compiles are flagged
        return original(self, *args, **kwargs)

    return _maybe_activate_jit_monitor


_WHY = "prove, after graphs are captured, that steering changes this worker's forward"
_UNTIL = "vLLM has a post-warm-up worker hook"
PATCHES = (
    Patch("vllm.v1.worker.gpu_worker:Worker._maybe_activate_jit_monitor", params=("self",),
          wrap=_testing_before_jit_monitor, why=_WHY, until=_UNTIL),
    Patch("vllm.v1.worker.cpu_worker:CPUWorker.compile_or_warm_up_model", params=("self",),
          wrap=_testing_after_warm_up, optional=True, why=_WHY + " (the CPU worker's warm-up)",
          until=_UNTIL),
)
