"""Steering survives preemption: a KV cache too small for the batch forces vLLM to
preempt and recompute requests, and each still gets the oracle's tokens."""

from __future__ import annotations

import pytest
from conftest import encode_prompts, greedy, start_llm, stop_llm, tokens
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine
NEW_TOKENS = 96


@pytest.fixture(scope="module")
def small_cache_engine(qwen3_tiny):
    model_dir, maps = qwen3_tiny
    # 4 layers x K+V x 1 head x 64 x fp32 = 2 KiB per token: room for ~600 tokens,
    # while the batch below needs about 1000.
    llm = start_llm(model_dir, maps, eager=True, max_model_len=256,
                    kv_cache_memory_bytes=1_250_000, max_num_seqs=8, disable_log_stats=False)
    yield llm
    stop_llm(llm)


def _preemptions(llm) -> float:
    return sum(getattr(m, "value", 0) for m in llm.get_metrics()
               if m.name == "vllm:num_preemptions")


def test_preempted_and_recomputed_requests_keep_the_oracles_tokens(small_cache_engine, qwen3_tiny):
    model_dir, map_paths = qwen3_tiny
    maps = {n: NeuronMap.load(p) for n, p in map_paths.items()}
    prompts = encode_prompts(model_dir)
    reqs = [(prompts[i % 3], {"steer_alpha": a, "steer_map": m})
            for i, (a, m) in enumerate([(0.3, "alpha_map"), (-1.0, "beta_map"), (4.0, "alpha_map"),
                                        (0.0, "alpha_map"), (0.3, "beta_map"), (-1.0, "alpha_map"),
                                        (4.0, "beta_map"), (0.3, "alpha_map")])]
    before = _preemptions(small_cache_engine)
    got = tokens(greedy(small_cache_engine, reqs, max_tokens=NEW_TOKENS))
    assert _preemptions(small_cache_engine) > before, "the batch was expected to be preempted"
    want = [hf_steered_generate(model_dir, ids, NEW_TOKENS, maps[e["steer_map"]], e["steer_alpha"])
            for ids, e in reqs]
    assert got == want


def test_preempted_requests_keep_the_oracles_tokens_for_every_steer_positions_value(
        small_cache_engine, qwen3_tiny):
    """Recompute after preemption re-runs positions 0..P-1 and more: each value's rule
    must still land on the same positions."""
    model_dir, map_paths = qwen3_tiny
    m = NeuronMap.load(map_paths["alpha_map"])
    prompts = encode_prompts(model_dir)
    values = ["from_last_prompt", "last_prompt", "generated"]
    reqs = [(prompts[i % 3], {"steer_alpha": -4.0, "steer_positions": values[i % 3]})
            for i in range(8)]
    before = _preemptions(small_cache_engine)
    got = tokens(greedy(small_cache_engine, reqs, max_tokens=NEW_TOKENS))
    assert _preemptions(small_cache_engine) > before, "the batch was expected to be preempted"
    want = [hf_steered_generate(model_dir, ids, NEW_TOKENS, m, -4.0, e["steer_positions"])
            for ids, e in reqs]
    assert got == want
