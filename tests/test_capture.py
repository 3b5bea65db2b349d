"""In-engine capture: per-trace mean of every layer's down_proj input equals what the
paper's HF forward-pre-hook computes (fp32, 1e-4), for traces of different lengths sharing
batches, under chunked prefill, preemption and tensor parallelism, eager and with vLLM's
torch.compile (``ActivationCapture(compiled=True)``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from adaras_vllm.engine.capture import CAPTURE_ENV
from adaras_vllm.pipeline.activations import ActivationCapture
from adaras_vllm.pipeline.hf_capture import hf_trace_means, load_hf_model

pytestmark = pytest.mark.engine

LENGTHS = (1, 5, 33, 64, 70, 129, 150, 300)
TOL = 1e-4


def _engine(model_dir, **overrides) -> ActivationCapture:  # noqa: ANN001
    kw = dict(dtype="float32", max_model_len=512, max_num_seqs=4, max_num_batched_tokens=64,
              kv_cache_memory_bytes=64 << 20)
    kw.update(overrides)
    return ActivationCapture(str(model_dir), **kw)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, 380, size=n).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def reference(qwen3_tiny, prompts) -> list[np.ndarray]:
    model_dir, _ = qwen3_tiny
    return list(hf_trace_means(load_hf_model(model_dir), prompts))


@pytest.fixture(scope="module")
def chunked(qwen3_tiny):
    with _engine(qwen3_tiny[0]) as cap:
        yield cap


def _max_error(got: dict[int, np.ndarray], reference: list[np.ndarray]) -> float:
    return max(float(np.abs(got[i] - ref).max()) for i, ref in enumerate(reference))


def test_means_equal_hf_forward_hook_means_under_chunked_prefill(chunked, prompts, reference):
    got = dict(chunked.means(prompts))
    assert sorted(got) == list(range(len(prompts)))
    assert all(got[i].shape == (4, 384) for i in got)
    assert _max_error(got, reference) < TOL


def test_means_do_not_depend_on_batch_order(chunked, prompts, reference):
    order = list(reversed(range(len(prompts))))
    got = dict(chunked.means([prompts[i] for i in order]))
    assert _max_error({order[j]: m for j, m in got.items()}, reference) < TOL


def test_engine_reused_for_more_prompts_than_slots_gives_each_its_own_mean(chunked, prompts,
                                                                           reference):
    many = prompts * 3  # 24 prompts through 4 slots, over several generate calls
    chunked.chunk = 5
    try:
        got = dict(chunked.means(many))
    finally:
        chunked.chunk = 16
    assert _max_error({i: got[i + len(prompts)] for i in range(len(prompts))}, reference) < TOL
    assert _max_error({i: got[i + 2 * len(prompts)] for i in range(len(prompts))},
                      reference) < TOL


def test_capture_mode_does_not_leak_into_later_engines(chunked):
    assert CAPTURE_ENV not in os.environ


def test_capture_is_exact_beside_decoding_requests_under_preemption(qwen3_tiny, prompts,
                                                                    reference):
    """Long-decoding requests that do not capture share a KV cache too small for all:
    vLLM preempts, the fillers are not captured, and every captured mean is exact.
    (Recompute of a half-captured prompt is covered step by step in test_capture_state.)"""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from adaras_vllm.engine.capture import CAPTURE_KEY, FETCH_METHOD, CaptureResult

    with _engine(qwen3_tiny[0], kv_cache_memory_bytes=1_250_000, max_num_seqs=8,
                 max_model_len=384, disable_log_stats=False) as cap:
        fillers = [([7 + k] * 120, SamplingParams(max_tokens=60, ignore_eos=True))
                   for k in range(2)]
        captured = [(p, SamplingParams(max_tokens=1, extra_args={CAPTURE_KEY: str(i)}))
                    for i, p in enumerate(prompts)]
        batch = fillers + captured
        cap.llm.generate([TokensPrompt(prompt_token_ids=p) for p, _ in batch],
                         [sp for _, sp in batch], use_tqdm=False)
        (rank0,) = cap.llm.collective_rpc(FETCH_METHOD)
        preemptions = sum(m.value for m in cap.llm.get_metrics()
                          if m.name == "vllm:num_preemptions")
    results = {int(k): CaptureResult.from_wire(v) for k, v in rank0.items()}
    assert preemptions > 0, "the KV cache was meant to be too small for the batch"
    assert sorted(results) == list(range(len(prompts)))  # fillers are not captured
    assert all(r.complete and r.tokens == len(prompts[i]) for i, r in results.items())
    got = {i: r.sums / r.tokens for i, r in results.items()}
    assert _max_error(got, reference) < TOL


def test_tensor_parallel_ranks_join_their_shards(qwen3_tiny, prompts, reference):
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    try:
        with _engine(qwen3_tiny[0], tensor_parallel_size=2) as cap:
            got = dict(cap.means(prompts))
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    assert _max_error(got, reference) < TOL


# ---- compiled: the graph's in-place accumulation into the static sums is the eager one's


@pytest.fixture(scope="module")
def compiled(qwen3_tiny):
    with _engine(qwen3_tiny[0], compiled=True) as cap:
        yield cap


def test_engine_is_compiled(compiled):
    cfg = compiled.llm.llm_engine.vllm_config
    assert not cfg.model_config.enforce_eager
    assert int(cfg.compilation_config.mode) != 0  # not CompilationMode.NONE


def test_compiled_means_equal_hf_forward_hook_means_under_chunked_prefill(compiled, prompts,
                                                                          reference):
    got = dict(compiled.means(prompts))
    assert sorted(got) == list(range(len(prompts)))
    assert _max_error(got, reference) < TOL


def test_compiled_slots_reused_across_calls_give_each_prompt_its_own_mean(compiled, prompts,
                                                                          reference):
    many = prompts * 3  # 24 prompts through 4 slots, over several generate calls
    compiled.chunk = 5
    try:
        got = dict(compiled.means(many))
    finally:
        compiled.chunk = 16
    for k in range(3):
        assert _max_error({i: got[i + k * len(prompts)] for i in range(len(prompts))},
                          reference) < TOL
