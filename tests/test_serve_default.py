"""The README's main job: ``adaras serve`` with no model serves the built-in tiny model
and map, prints its URL and an example curl, and that request is steered."""

from __future__ import annotations

import os
import sys

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, free_port

pytestmark = pytest.mark.engine


def test_serve_without_a_model_serves_the_demo_model_and_its_printed_request_works(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["ADARAS_CACHE"] = str(tmp_path / "cache")
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "adaras_vllm", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with RunningServer(cmd, env, log, port) as server:
        printed = log.read_text()
        assert f"http://127.0.0.1:{port}" in printed and "curl -s" in printed
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=120, json={
            "model": "adaras-tiny-qwen3", "max_tokens": 8, "steer_alpha": 0.3,
            "messages": [{"role": "user", "content": "What is 12 + 7?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["steering"] == {"map": "demo", "alpha": 0.3, "applied": True,
                                        "mode": "always"}
        maps = httpx.get(f"{server.base}/v1/steering/maps").json()["data"]
        assert [m["name"] for m in maps] == ["demo"]
