"""Tensor parallel (TP=2 on CPU): each rank steers only its shard of the intermediate
dim, and together they produce the oracle's tokens."""

from __future__ import annotations

import pytest
from conftest import encode_prompts, greedy, start_llm, stop_llm, tokens, two_ranks_bound
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tp_engine(qwen3_tiny):
    model_dir, maps = qwen3_tiny
    with two_ranks_bound():
        llm = start_llm(model_dir, maps, eager=True, tensor_parallel_size=2)
        yield llm
        stop_llm(llm)


def test_maps_span_both_shards(qwen3_tiny):
    _, maps = qwen3_tiny
    idx = NeuronMap.load(maps["alpha_map"]).layers[1][0]
    half = NeuronMap.load(maps["alpha_map"]).intermediate_size // 2
    assert (idx < half).any() and (idx >= half).any()


def test_tensor_parallel_engine_matches_the_hf_oracle(tp_engine, qwen3_tiny):
    model_dir, map_paths = qwen3_tiny
    maps = {n: NeuronMap.load(p) for n, p in map_paths.items()}
    prompts = encode_prompts(model_dir)[:2]
    reqs = [(ids, {"steer_alpha": a, "steer_map": m})
            for m in maps for a in (0.3, -1.0, 4.0) for ids in prompts]
    got = tokens(greedy(tp_engine, reqs))
    want = [hf_steered_generate(model_dir, ids, 32, maps[e["steer_map"]], e["steer_alpha"])
            for ids, e in reqs]
    assert got == want


def test_tensor_parallel_engine_matches_the_oracle_for_every_steer_positions_value(
        tp_engine, qwen3_tiny):
    model_dir, map_paths = qwen3_tiny
    m = NeuronMap.load(map_paths["alpha_map"])
    prompts = encode_prompts(model_dir)[:2]
    reqs = [(ids, {"steer_alpha": -4.0, "steer_positions": p})
            for p in ("from_last_prompt", "last_prompt", "generated") for ids in prompts]
    got = tokens(greedy(tp_engine, reqs))
    want = [hf_steered_generate(model_dir, ids, 32, m, -4.0, e["steer_positions"])
            for ids, e in reqs]
    assert got == want
