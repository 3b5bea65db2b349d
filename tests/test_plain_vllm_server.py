"""Plain vLLM OpenAI server (no code of ours but the plugin): steering via ``vllm_xargs``.

A real server process on a free loopback port, tiny Qwen3, eager.
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import ENV_VAR, RunningServer, encode_prompts, free_port, map_spec
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(qwen3_tiny, tmp_path_factory):
    model_dir, maps = qwen3_tiny
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--kv-cache-memory-bytes", str(256 << 20)]
    env = {**os.environ, ENV_VAR: map_spec(maps)}
    log = tmp_path_factory.mktemp("plain-server") / "server.log"
    with RunningServer(cmd, env, log, port) as running:
        yield running.base, str(model_dir)


def _complete(base, model, ids, xargs=None):
    import httpx

    body = {"model": model, "prompt": ids, "max_tokens": 24, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return httpx.post(f"{base}/v1/completions", json=body, timeout=120)


def test_vllm_xargs_steer_the_completion_like_the_oracle(server, qwen3_tiny):
    base, model = server
    maps = {n: NeuronMap.load(p) for n, p in qwen3_tiny[1].items()}
    ids = encode_prompts(qwen3_tiny[0])[0]
    for xargs in ({"steer_alpha": 0.3}, {"steer_alpha": -1.0, "steer_map": "beta_map"}):
        r = _complete(base, model, ids, xargs)
        assert r.status_code == 200, r.text
        neuron_map = maps[xargs.get("steer_map", "alpha_map")]
        want = hf_steered_generate(qwen3_tiny[0], ids, 24, neuron_map, xargs["steer_alpha"])
        assert r.json()["choices"][0]["token_ids"] == want


@pytest.mark.parametrize("xargs,field", [
    ({"steer_alpha": "abc"}, "steer_alpha"),
    ({"steer_alpha": 100}, "steer_alpha"),
    ({"steer_map": "nope"}, "steer_map"),
])
def test_bad_vllm_xargs_are_a_400_naming_the_field_and_the_server_keeps_serving(
    server, qwen3_tiny, xargs, field
):
    base, model = server
    ids = encode_prompts(qwen3_tiny[0])[0]
    r = _complete(base, model, ids, xargs)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
    assert _complete(base, model, ids, {"steer_alpha": 0.3}).status_code == 200
