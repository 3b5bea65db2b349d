"""Every supported architecture steers exactly like the HF oracle, eager and compiled."""

from __future__ import annotations

import pytest
from conftest import encode_prompts, greedy, start_llm, stop_llm, tiny_model, tokens
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine

ALPHAS = [0.0, 0.3, -1.0, 4.0]
CASES = [("qwen2", False), ("llama", False), ("qwen2", True), ("llama", True), ("mistral", True)]


IDS = [f"{arch}-{'eager' if eager else 'compiled'}" for arch, eager in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    arch, eager = request.param
    model_dir, map_paths = tiny_model(arch)
    llm = start_llm(model_dir, map_paths, eager=eager)
    maps = {name: NeuronMap.load(p) for name, p in map_paths.items()}
    yield llm, model_dir, maps
    stop_llm(llm)


def test_engine_matches_the_hf_oracle_for_every_alpha_and_map(case):
    llm, model_dir, maps = case
    prompts = encode_prompts(model_dir)[:2]
    reqs = [
        (ids, {"steer_alpha": a, "steer_map": m}) for m in maps for a in ALPHAS for ids in prompts
    ]
    got = tokens(greedy(llm, reqs))
    want = [
        hf_steered_generate(model_dir, ids, 32, maps[extra["steer_map"]], extra["steer_alpha"])
        for ids, extra in reqs
    ]
    assert got == want
