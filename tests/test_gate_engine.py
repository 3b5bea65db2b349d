"""The correctness gate inside a real vLLM engine (``steer_mode: "adaptive"``).

The in-engine ``p_good`` must equal the paper's gate computed independently on the HF
model (forward-pre-hooks on ``down_proj``, positions 0..P-2), with chunked prefill
splitting long prompts (64-token steps) and prefix caching on; a request whose gate fires
must produce exactly the tokens of ``always``, one whose gate does not exactly those of
``off``, and any mix of modes, alphas and maps in one batch gives each its solo tokens.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import greedy, start_llm, stop_llm, tokens, two_ranks_bound
from gated_maps import gated_map_for

from adaras_vllm.engine.gate_runtime import RESULTS_METHOD
from adaras_vllm.engine.resolved import GATE_KEY

pytestmark = pytest.mark.engine

ALPHA = 4.0
ENGINE = dict(max_num_batched_tokens=64, enable_prefix_caching=True)


@pytest.fixture(scope="module")
def gated_setup(qwen3_tiny):
    model_dir, path, prompts, scores, gate = gated_map_for("qwen3", seed=7)
    return model_dir, {"gated_map": path, "beta_map": qwen3_tiny[1]["beta_map"]}, prompts, \
        scores, gate


@pytest.fixture(scope="module", params=[True, False], ids=["eager", "compiled"])
def engine(request, gated_setup):
    model_dir, maps, *_ = gated_setup
    llm = start_llm(model_dir, maps, eager=request.param, **ENGINE)
    yield llm
    stop_llm(llm)


def adaptive(key: str, alpha: float = ALPHA) -> dict:
    return {"steer_mode": "adaptive", "steer_alpha": alpha, "steer_map": "gated_map",
            GATE_KEY: key}


def gate_results(llm) -> dict:  # noqa: ANN001
    return llm.collective_rpc(RESULTS_METHOD, args=(None,))[0]


def test_in_engine_gate_score_equals_the_hf_computation(engine, gated_setup):
    _, _, prompts, scores, gate = gated_setup
    greedy(engine, [(ids, adaptive(f"s{i}")) for i, ids in enumerate(prompts)], max_tokens=4)
    got = gate_results(engine)
    for i, want in enumerate(scores):
        r = got[f"s{i}"]
        assert abs(r["p_good"] - want) < 1e-4, (i, len(prompts[i]), r["p_good"], want)
        assert r["fired"] == (want < gate.threshold) and r["threshold"] == gate.threshold


def test_the_threshold_splits_the_prompts_so_both_outcomes_are_tested(gated_setup):
    _, _, _, scores, gate = gated_setup
    fired = [s < gate.threshold for s in scores]
    assert any(fired) and not all(fired)


def test_fired_requests_equal_always_and_unfired_requests_equal_off(engine, gated_setup):
    _, _, prompts, scores, gate = gated_setup
    always = {"steer_alpha": ALPHA, "steer_map": "gated_map"}
    reqs = ([(ids, adaptive(f"f{i}")) for i, ids in enumerate(prompts)]
            + [(ids, always) for ids in prompts]
            + [(ids, {"steer_mode": "off", "steer_map": "gated_map"}) for ids in prompts])
    out = tokens(greedy(engine, reqs))
    n = len(prompts)
    got, on, off = out[:n], out[n:2 * n], out[2 * n:]
    assert on != off  # steering changes these prompts' tokens: the comparison can fail
    for i in range(n):
        want = on[i] if scores[i] < gate.threshold else off[i]
        assert got[i] == want, (i, scores[i], gate.threshold)
    gate_results(engine)  # drop this test's results


@pytest.mark.parametrize("positions", ["last_prompt", "generated"])
def test_adaptive_decides_before_the_first_steered_position_for_every_positions_value(
        engine, gated_setup, positions):
    """The gate reads 0..P-2 and decides at P-1, before either value's first steered
    position: a fired request equals ``always``, an unfired one ``off``, at that value."""
    _, _, prompts, scores, gate = gated_setup
    at = {"steer_positions": positions}
    always = {"steer_alpha": ALPHA, "steer_map": "gated_map", **at}
    reqs = ([(ids, {**adaptive(f"p{positions}{i}"), **at}) for i, ids in enumerate(prompts)]
            + [(ids, always) for ids in prompts]
            + [(ids, {"steer_mode": "off", "steer_map": "gated_map"}) for ids in prompts])
    out = tokens(greedy(engine, reqs))
    n = len(prompts)
    got, on, off = out[:n], out[n:2 * n], out[2 * n:]
    assert on != off
    for i in range(n):
        assert got[i] == (on[i] if scores[i] < gate.threshold else off[i]), (i, scores[i])
    gate_results(engine)


def test_a_mixed_batch_gives_every_request_its_solo_tokens(engine, gated_setup):
    _, _, prompts, _, _ = gated_setup
    kinds = [adaptive("m0"), {"steer_alpha": -1.0, "steer_map": "beta_map"},
             adaptive("m1", alpha=-2.0), {"steer_mode": "off"},
             {"steer_alpha": ALPHA, "steer_map": "gated_map"}]
    reqs = [(ids, kinds[i % len(kinds)]) for i, ids in enumerate(prompts)]
    batch = tokens(greedy(engine, reqs))
    solo = [tokens(greedy(engine, [r]))[0] for r in reqs]
    assert batch == solo
    gate_results(engine)


def test_a_cached_prefix_does_not_change_the_score(engine, gated_setup):
    model_dir, _, prompts, scores, _ = gated_setup
    long = prompts[-1]
    # Fill the prefix cache with the long prompt (unsteered), then ask again, adaptive.
    greedy(engine, [(long, {"steer_mode": "off"})], max_tokens=2)
    greedy(engine, [(long, adaptive("c0"))], max_tokens=2)
    # And a longer prompt whose prefix is cached: its score is its own.
    longer = long + long[:20]
    greedy(engine, [(longer, adaptive("c1"))], max_tokens=2)
    got = gate_results(engine)
    assert abs(got["c0"]["p_good"] - scores[-1]) < 1e-4
    from hf_oracle import hf_gate_score

    gate = gated_setup[4]
    assert abs(got["c1"]["p_good"] - hf_gate_score(model_dir, longer, gate)) < 1e-4


def test_adaptive_with_alpha_zero_runs_unsteered_and_records_no_gate(engine, gated_setup):
    _, _, prompts, _, _ = gated_setup
    out = tokens(greedy(engine, [(prompts[2], adaptive("z0", alpha=0.0)),
                                 (prompts[2], {"steer_mode": "off"})]))
    assert out[0] == out[1] and "z0" not in gate_results(engine)


def test_hf_gate_features_read_positions_before_the_last_prompt_token(gated_setup):
    from hf_oracle import hf_gate_features

    model_dir, _, prompts, _, gate = gated_setup
    feats = hf_gate_features(model_dir, prompts[2], gate)
    assert feats.shape == (len(prompts[2]) - 1, gate.num_features)
    assert torch.isfinite(feats).all()


@pytest.fixture(scope="module", params=["llama", "qwen3-tp2"])
def other_engine(request):
    arch = request.param.split("-")[0]
    model_dir, path, *rest = gated_map_for(arch, seed=11)
    setup = (model_dir, {"gated_map": path}, *rest)
    tp2 = request.param.endswith("tp2")
    with two_ranks_bound() if tp2 else contextlib.nullcontext():
        llm = start_llm(setup[0], setup[1], eager=True, **ENGINE,
                        **({"tensor_parallel_size": 2} if tp2 else {}))
        yield llm, setup
        stop_llm(llm)


def test_llama_and_tensor_parallel_gates_equal_hf_and_follow_their_decision(other_engine):
    llm, (_, _, prompts, scores, gate) = other_engine
    always = {"steer_alpha": ALPHA, "steer_map": "gated_map"}
    reqs = ([(ids, adaptive(f"t{i}")) for i, ids in enumerate(prompts)]
            + [(ids, always) for ids in prompts]
            + [(ids, {"steer_mode": "off"}) for ids in prompts])
    out = tokens(greedy(llm, reqs, max_tokens=16))
    results = llm.collective_rpc(RESULTS_METHOD, args=(None,))
    assert all(r == results[0] for r in results)  # every rank decided the same
    n = len(prompts)
    for i, want in enumerate(scores):
        assert abs(results[0][f"t{i}"]["p_good"] - want) < 1e-4, (i, want)
        fired = want < gate.threshold
        assert out[i] == (out[n + i] if fired else out[2 * n + i]), i
