"""The serving path: AsyncLLM (what the OpenAI server runs), eager tiny Qwen3.

A bad request fails alone while good ones in flight finish with their own tokens.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from conftest import ENV_VAR, encode_prompts, engine_kwargs, map_spec
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def async_engine(qwen3_tiny):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    model_dir, maps = qwen3_tiny
    os.environ[ENV_VAR] = map_spec(maps)
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=str(model_dir), **engine_kwargs(eager=True))
    )
    yield engine
    engine.shutdown()


async def _generate(engine, ids, extra, max_tokens=32):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                            extra_args=extra)
    final = None
    async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                     request_id=uuid.uuid4().hex):
        final = out
    return list(final.outputs[0].token_ids)


def test_a_bad_request_fails_alone_while_good_requests_in_flight_finish(async_engine, qwen3_tiny):
    model_dir, map_paths = qwen3_tiny
    maps = {n: NeuronMap.load(p) for n, p in map_paths.items()}
    prompts = encode_prompts(model_dir)
    good = [
        (prompts[0], {"steer_alpha": 0.3}),
        (prompts[1], {"steer_alpha": -1.0, "steer_map": "beta_map"}),
        (prompts[2], None),
    ]
    bad = [(prompts[0], {"steer_alpha": float("nan")}), (prompts[1], {"steer_map": "x"})]

    async def scenario():
        tasks = [
            asyncio.create_task(_generate(async_engine, ids, extra, 48)) for ids, extra in good
        ]
        await asyncio.sleep(0.2)  # the good ones are running
        errors = await asyncio.gather(
            *(_generate(async_engine, ids, extra) for ids, extra in bad), return_exceptions=True
        )
        return await asyncio.gather(*tasks), errors

    results, errors = asyncio.run(scenario())
    assert all(isinstance(e, ValueError) for e in errors), errors
    assert "steer_alpha must be a finite number" in str(errors[0])
    assert "steer_map must be one of the loaded maps" in str(errors[1])
    for (ids, extra), got in zip(good, results):
        extra = extra or {}
        want = hf_steered_generate(model_dir, ids, 48, maps[extra.get("steer_map", "alpha_map")],
                                   extra.get("steer_alpha", 0.0))
        assert got == want
