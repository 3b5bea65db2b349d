"""``steer_positions``: which positions of a request are steered, per request, in a real
compiled engine (tiny Qwen3, CPU) against the HF oracle, with chunked prefill forced
(``max_num_batched_tokens`` 64) so a long prompt reaches ``P-1`` in a later chunk; and
what each value does to the prefix cache. Eager engines are held to the same oracle for
every value in ``test_engine_preemption.py`` and ``test_engine_tp.py``."""

from __future__ import annotations

import pytest
from conftest import encode_prompts, greedy, start_llm, stop_llm
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine

POSITIONS = ["from_last_prompt", "last_prompt", "generated"]
NEW_TOKENS = 24
ALPHA = -4.0  # on this model and map, each value gives other tokens (checked below)


@pytest.fixture(scope="module")
def engine(qwen3_tiny):
    model_dir, maps = qwen3_tiny
    llm = start_llm(model_dir, maps, eager=False, max_num_batched_tokens=64)
    yield llm
    stop_llm(llm)


@pytest.fixture(scope="module")
def maps(qwen3_tiny):
    return {name: NeuronMap.load(path) for name, path in qwen3_tiny[1].items()}


@pytest.fixture(scope="module")
def prompts(qwen3_tiny):
    short = encode_prompts(qwen3_tiny[0])
    long = []
    while len(long) < 150:  # three chunks of 64: P-1 lands in the last one
        long += short[2]
    return {"short": short[0], "long": long[:150]}


@pytest.fixture(scope="module")
def block_size(engine):
    return engine.llm_engine.vllm_config.cache_config.block_size


def oracle(qwen3_tiny, maps, ids, alpha, positions, n=NEW_TOKENS):
    return hf_steered_generate(qwen3_tiny[0], ids, n, maps["alpha_map"], alpha, positions)


def steer(alpha, positions):
    return {"steer_alpha": alpha, "steer_positions": positions}


@pytest.mark.parametrize("prompt", ["short", "long"])
@pytest.mark.parametrize("positions", POSITIONS)
def test_each_positions_value_gives_the_oracles_tokens(engine, qwen3_tiny, maps, prompts,
                                                       positions, prompt):
    ids = prompts[prompt]
    engine.reset_prefix_cache()
    out = greedy(engine, [(ids, steer(ALPHA, positions))], max_tokens=NEW_TOKENS)[0]
    assert list(out.outputs[0].token_ids) == oracle(qwen3_tiny, maps, ids, ALPHA, positions)


def test_the_three_values_steer_differently(engine, prompts):
    """So the oracle comparisons above tell the values apart."""
    engine.reset_prefix_cache()
    outs = greedy(engine, [(prompts["short"], steer(ALPHA, p)) for p in POSITIONS],
                  max_tokens=NEW_TOKENS)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 3


def test_a_batch_mixing_every_value_gives_each_request_its_solo_tokens(
        engine, qwen3_tiny, maps, prompts):
    requests = [(prompts[p], steer(a, pos)) for p in ("short", "long")
                for a, pos in ((4.0, "last_prompt"), (-1.0, "generated"),
                               (0.3, "from_last_prompt"))] + [(prompts["short"], None)]
    engine.reset_prefix_cache()
    outs = greedy(engine, requests, max_tokens=NEW_TOKENS)
    for (ids, extra), out in zip(requests, outs):
        extra = extra or {"steer_alpha": 0.0, "steer_positions": "from_last_prompt"}
        assert list(out.outputs[0].token_ids) == oracle(
            qwen3_tiny, maps, ids, extra["steer_alpha"], extra["steer_positions"])


@pytest.mark.parametrize("first", [None, steer(4.0, "generated")],
                         ids=["after-unsteered", "after-generated"])
def test_generated_shares_the_whole_prompt_kv_with_unsteered_requests(
        engine, prompts, block_size, first):
    """Decode-only steering leaves every prompt block unkeyed: reused both ways."""
    ids = prompts["long"]
    engine.reset_prefix_cache()
    greedy(engine, [(ids, first)], max_tokens=4)
    for second in (steer(4.0, "generated"), None):
        out = greedy(engine, [(ids, second)], max_tokens=4)[0]
        assert out.num_cached_tokens == (len(ids) - 1) // block_size * block_size > 0


@pytest.mark.parametrize("positions", ["last_prompt", "from_last_prompt", "generated"])
def test_a_continuation_never_reuses_kv_steered_at_positions_it_leaves_unsteered(
        engine, qwen3_tiny, maps, prompts, block_size, positions):
    """Blocks from the first steered position on carry the key; only earlier ones are
    shared (generated: the first steered position is P, the first generated token)."""
    ids = prompts["short"] * 3
    ids = ids[: block_size + 3]
    engine.reset_prefix_cache()
    first = greedy(engine, [(ids, steer(4.0, positions))], max_tokens=3 * block_size)[0]
    cont = ids + list(first.outputs[0].token_ids)[: 2 * block_size]
    second = greedy(engine, [(cont, None)], max_tokens=NEW_TOKENS)[0]
    first_steered = len(ids) if positions == "generated" else len(ids) - 1
    assert second.num_cached_tokens == first_steered // block_size * block_size
    assert list(second.outputs[0].token_ids) == oracle(qwen3_tiny, maps, cont, 0.0,
                                                       "from_last_prompt")


def test_a_bad_positions_value_fails_that_request_naming_the_field(engine, prompts):
    with pytest.raises(ValueError, match="steer_positions must be one of from_last_prompt, "
                                         "last_prompt, generated"):
        greedy(engine, [(prompts["short"], steer(1.0, "decode"))])
    assert greedy(engine, [(prompts["short"], None)], max_tokens=2)  # still serving

