"""Pipeline parallel (PP=2): each stage steers the mapped layers it owns, and together they
produce the oracle's tokens. Needs two CUDA devices: vLLM 0.32's CPU backend cannot run
PP=2 at all (``AssertionError`` in ``sync_and_gather_intermediate_tensors``, with or
without this plugin)."""

from __future__ import annotations

import pytest
import torch
from conftest import encode_prompts, greedy, start_llm, stop_llm, tokens
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = [
    pytest.mark.engine,
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]


@pytest.fixture(scope="module")
def pp_engine(qwen3_tiny):
    model_dir, maps = qwen3_tiny
    llm = start_llm(model_dir, maps, eager=True, pipeline_parallel_size=2)
    yield llm
    stop_llm(llm)


def test_each_stage_reports_only_its_own_layers(pp_engine):
    statuses = pp_engine.collective_rpc("adaras_steering_status")
    layers = [s["layers"] for s in statuses]
    assert sorted(sum(layers, [])) == [1, 2, 3]
    assert all(set(a).isdisjoint(b) for a in layers for b in layers if a is not b)


def test_pipeline_parallel_engine_matches_the_hf_oracle(pp_engine, qwen3_tiny):
    model_dir, map_paths = qwen3_tiny
    maps = {n: NeuronMap.load(p) for n, p in map_paths.items()}
    prompts = encode_prompts(model_dir)[:2]
    reqs = [(ids, {"steer_alpha": a, "steer_map": m})
            for m in maps for a in (0.3, 4.0) for ids in prompts]
    got = tokens(greedy(pp_engine, reqs))
    want = [hf_steered_generate(model_dir, ids, 32, maps[e["steer_map"]], e["steer_alpha"])
            for ids, e in reqs]
    assert got == want
