"""Steering inside a real, compiled vLLM engine (tiny Qwen3, CPU), checked against the
HF reference oracle. Chunked prefill is forced on (max_num_batched_tokens=64), so long
prompts reach position ``prompt_len - 1`` in a later chunk.
"""

from __future__ import annotations

import os

import pytest
from conftest import (
    ENV_VAR,
    encode_prompts,
    engine_kwargs,
    greedy,
    run_engine_job,
    start_llm,
    stop_llm,
    tokens,
)
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine

ALPHAS = [0.0, 0.3, -1.0, 4.0]
NEW_TOKENS = 32
ENGINE = dict(max_num_batched_tokens=64)


@pytest.fixture(scope="module")
def engine(qwen3_tiny):
    model_dir, maps = qwen3_tiny
    llm = start_llm(model_dir, maps, eager=False, **ENGINE)
    yield llm
    stop_llm(llm)


@pytest.fixture(scope="module")
def model_dir(qwen3_tiny):
    return qwen3_tiny[0]


@pytest.fixture(scope="module")
def maps(qwen3_tiny):
    return {name: NeuronMap.load(path) for name, path in qwen3_tiny[1].items()}


@pytest.fixture(scope="module")
def prompts(model_dir):
    return encode_prompts(model_dir)


@pytest.fixture(scope="module")
def block_size(engine):
    return engine.llm_engine.vllm_config.cache_config.block_size


def oracle(model_dir, ids, maps, map_name, alpha, n=NEW_TOKENS):
    return hf_steered_generate(model_dir, ids, n, maps[map_name], alpha)


def long_prompt(prompts, length):
    ids = []
    while len(ids) < length:
        ids += prompts[2]
    return ids[:length]


@pytest.mark.parametrize("map_name", ["alpha_map", "beta_map"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_compiled_engine_matches_the_hf_oracle(engine, model_dir, maps, prompts, map_name, alpha):
    reqs = [(ids, {"steer_alpha": alpha, "steer_map": map_name}) for ids in prompts[:3]]
    got = tokens(greedy(engine, reqs))
    want = [oracle(model_dir, ids, maps, map_name, alpha) for ids in prompts[:3]]
    assert got == want


def test_steering_changes_the_output(engine, prompts):
    outs = tokens(greedy(engine, [(prompts[0], {"steer_alpha": a}) for a in ALPHAS]))
    assert len({tuple(o) for o in outs}) == len(ALPHAS)


def test_compiled_engine_reads_alpha_at_every_step_not_at_compile_time(engine, prompts):
    def run(alpha):
        return tokens(greedy(engine, [(prompts[0], {"steer_alpha": alpha})]))[0]

    first, changed, again = run(0.3), run(4.0), run(0.3)
    assert first == again
    assert changed != first


def test_mixed_batch_gives_each_request_its_solo_tokens(engine, prompts):
    mix = [
        (prompts[i % len(prompts)], {"steer_alpha": a, "steer_map": m})
        for i, (a, m) in enumerate(
            (a, m) for m in ("alpha_map", "beta_map") for a in ALPHAS
        )
    ]
    together = tokens(greedy(engine, mix))
    alone = [tokens(greedy(engine, [req]))[0] for req in mix]
    assert together == alone


def test_alpha_zero_equals_sending_no_steering_fields(engine, prompts):
    with_zero = greedy(engine, [(prompts[0], {"steer_alpha": 0.0})], logprobs=3)
    without = greedy(engine, [(prompts[0], None)], logprobs=3)
    assert tokens(with_zero) == tokens(without)
    assert with_zero[0].outputs[0].logprobs == without[0].outputs[0].logprobs


def test_alpha_zero_is_identical_to_vllm_without_the_plugin(engine, model_dir, prompts):
    reqs = [(ids, {"steer_alpha": 0.0}) for ids in prompts[:3]]
    ours = greedy(engine, reqs, logprobs=5)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    job = {
        "model": str(model_dir),
        "requests": [(ids, None) for ids, _ in reqs],
        "max_tokens": NEW_TOKENS,
        "logprobs": 5,
        "engine": engine_kwargs(eager=False, **ENGINE),
    }
    plain = run_engine_job(job, env)["outputs"]
    assert tokens(ours) == [o["tokens"] for o in plain]
    ours_lp = [
        [{str(k): v.logprob for k, v in step.items()} for step in o.outputs[0].logprobs]
        for o in ours
    ]
    assert ours_lp == [o["logprobs"] for o in plain]


BAD = [
    ({"steer_alpha": float("nan")}, "steer_alpha must be a finite number"),
    ({"steer_alpha": float("inf")}, "steer_alpha must be a finite number"),
    ({"steer_alpha": "abc"}, r"steer_alpha must be a finite number .* got 'abc'"),
    ({"steer_alpha": 1e6}, r"steer_alpha must be a finite number in \[-8, 8\]"),
    ({"steer_map": "nope"}, r"steer_map must be one of the loaded maps \(alpha_map, beta_map\)"),
    ({"steer_alpah": 0.3}, "unknown steering field"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for m, _ in [(str(b[0]), 0) for b in BAD]])
def test_bad_steering_parameters_fail_that_request_and_the_engine_keeps_serving(
    engine, model_dir, maps, prompts, extra, message
):
    with pytest.raises(ValueError, match=message):
        greedy(engine, [(prompts[0], extra)])
    after = tokens(greedy(engine, [(prompts[0], {"steer_alpha": 0.3})]))[0]
    assert after == oracle(model_dir, prompts[0], maps, "alpha_map", 0.3)


# ---- prefix caching ------------------------------------------------------------------


def test_identical_steered_requests_share_the_unsteered_prompt_prefix(engine, prompts, block_size):
    ids = long_prompt(prompts, 3 * block_size + 5)
    engine.reset_prefix_cache()
    first = greedy(engine, [(ids, {"steer_alpha": 0.3})])[0]
    second = greedy(engine, [(ids, {"steer_alpha": 0.3})])[0]
    assert second.num_cached_tokens == (len(ids) - 1) // block_size * block_size > 0
    assert list(second.outputs[0].token_ids) == list(first.outputs[0].token_ids)


def test_unsteered_kv_of_a_prompt_is_reused_by_a_steered_request(
    engine, model_dir, maps, prompts, block_size
):
    ids = long_prompt(prompts, 3 * block_size + 5)
    engine.reset_prefix_cache()
    greedy(engine, [(ids, None)])
    steered = greedy(engine, [(ids, {"steer_alpha": 4.0})])[0]
    assert steered.num_cached_tokens == (len(ids) - 1) // block_size * block_size > 0
    assert list(steered.outputs[0].token_ids) == oracle(model_dir, ids, maps, "alpha_map", 4.0)


@pytest.mark.parametrize(
    "follow_up", [None, {"steer_alpha": 4.0}, {"steer_alpha": 0.3, "steer_map": "beta_map"},
                  {"steer_alpha": 0.3}],
    ids=["unsteered", "other-alpha", "other-map", "same-params-longer-prompt"],
)
def test_kv_steered_under_one_configuration_is_never_reused_by_another(
    engine, model_dir, maps, prompts, block_size, follow_up
):
    """A continuation over steered output must recompute every steered block."""
    ids = long_prompt(prompts, block_size + 3)
    engine.reset_prefix_cache()
    first = greedy(engine, [(ids, {"steer_alpha": 0.3})], max_tokens=3 * block_size)[0]
    cont = ids + list(first.outputs[0].token_ids)[: 2 * block_size]
    second = greedy(engine, [(cont, follow_up)])[0]
    # Only blocks wholly before the first request's first steered position are shared.
    assert second.num_cached_tokens == (len(ids) - 1) // block_size * block_size
    extra = follow_up or {}
    want = oracle(model_dir, cont, maps, extra.get("steer_map", "alpha_map"),
                  extra.get("steer_alpha", 0.0))
    assert list(second.outputs[0].token_ids) == want
