"""In-engine capture with vLLM's torch.compile (``ActivationCapture(compiled=True)``): the
compiled graph's in-place accumulation into the static sums is the eager one's, so the
per-trace means equal the paper's HF forward-pre-hook means (fp32, 1e-4) for traces of
different lengths sharing batches under chunked prefill, and slots reused across calls
start clean."""

from __future__ import annotations

import numpy as np
import pytest

from adaras_vllm.pipeline.activations import ActivationCapture
from adaras_vllm.pipeline.hf_capture import hf_trace_means, load_hf_model

pytestmark = pytest.mark.engine

LENGTHS = (1, 5, 33, 64, 70, 129, 150, 300)
TOL = 1e-4


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, 380, size=n).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def reference(qwen3_tiny, prompts) -> list[np.ndarray]:
    model_dir, _ = qwen3_tiny
    return list(hf_trace_means(load_hf_model(model_dir), prompts))


@pytest.fixture(scope="module")
def compiled(qwen3_tiny):
    with ActivationCapture(str(qwen3_tiny[0]), dtype="float32", max_model_len=512,
                           max_num_seqs=4, max_num_batched_tokens=64,
                           kv_cache_memory_bytes=64 << 20, compiled=True) as cap:
        yield cap


def _max_error(got: dict[int, np.ndarray], reference: list[np.ndarray]) -> float:
    return max(float(np.abs(got[i] - ref).max()) for i, ref in enumerate(reference))


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
