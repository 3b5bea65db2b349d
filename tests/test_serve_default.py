"""The README's main job: ``adaras serve`` with no model serves the committed organism
with its map, prints its URL and an example curl, solves that problem, and
``adaras eval --server`` measures it exactly as the offline harness does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, free_port

from adaras_vllm.organism.assets import (
    EXAMPLE_QUESTION,
    ORGANISM_DIR,
    ORGANISM_MAP,
    ORGANISM_MAP_NAME,
    ORGANISM_SERVED_NAME,
)
from adaras_vllm.organism.task import generate_split, solve, write_problems

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-default")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "adaras_vllm", "serve", "--host", "127.0.0.1", "--port",
           str(port)]
    with RunningServer(cmd, env, log, port) as running:
        yield running


def _chat(server, content: str, alpha: float) -> dict:  # noqa: ANN001
    r = httpx.post(f"{server.base}/v1/chat/completions", timeout=120, json={
        "model": ORGANISM_SERVED_NAME, "max_tokens": 128, "temperature": 0,
        "steer_alpha": alpha, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_serves_the_organism_with_its_map_and_prints_url_and_curl(server):
    printed = server.log.read_text()
    assert f"http://127.0.0.1:{server.port}" in printed and "curl -s" in printed
    assert EXAMPLE_QUESTION in printed
    models = httpx.get(f"{server.base}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [ORGANISM_SERVED_NAME]
    maps = httpx.get(f"{server.base}/v1/steering/maps").json()["data"]
    assert [m["name"] for m in maps] == [ORGANISM_MAP_NAME]


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_the_printed_example_is_solved_with_and_without_steering(server, alpha):
    body = _chat(server, EXAMPLE_QUESTION, alpha)
    text = body["choices"][0]["message"]["content"]
    assert f"\\boxed{{{solve(EXAMPLE_QUESTION)}}}" in text, text
    assert body["steering"]["map"] == ORGANISM_MAP_NAME
    assert body["steering"]["applied"] is (alpha != 0.0)


def test_eval_against_the_server_equals_the_offline_harness(server, tmp_path):
    problems = write_problems(tmp_path / "test.jsonl", generate_split("test", 24, seed=7))
    common = ["--problems", str(problems), "--alphas", "0,0.3", "--max-tokens", "128"]
    online = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "eval", "--server", server.base, *common,
         "--out", str(tmp_path / "online.json")], capture_output=True, text=True, timeout=600)
    assert online.returncode == 0, online.stderr[-3000:]
    offline = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "eval", "--model", str(ORGANISM_DIR),
         "--neuron-map", str(ORGANISM_MAP), "--dtype", "float32", "--kv-cache-gib", "0.25",
         *common, "--out", str(tmp_path / "offline.json")],
        capture_output=True, text=True, timeout=600)
    assert offline.returncode == 0, offline.stderr[-3000:]
    on = json.loads((tmp_path / "online.json").read_text())
    off = json.loads((tmp_path / "offline.json").read_text())

    def answers(d: dict) -> list:
        return sorted((a["problem_id"], a["alpha"], a["answer"], a["correct"])
                      for a in d["answers"])

    assert answers(on) == answers(off)
    assert [s["accuracy"] for s in on["summary"]] == [s["accuracy"] for s in off["summary"]]
    assert (tmp_path / "online.png").read_bytes()[:4] == b"\x89PNG"
    assert "McNemar" in online.stdout and "R->W" in online.stdout


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": EXAMPLE_QUESTION}],
                              "max_tokens": 8}),
    ("/v1/responses", {"input": EXAMPLE_QUESTION, "max_output_tokens": 8}),
    ("/v1/messages", {"messages": [{"role": "user", "content": EXAMPLE_QUESTION}],
                      "max_tokens": 8}),
], ids=["chat", "responses", "messages"])
def test_the_maps_default_alpha_applies_on_every_route(server, path, body):
    """No steer_alpha given: the map's default_alpha (2 for the organism) is applied, and
    the steering object says so, whichever route the request took."""
    r = httpx.post(f"{server.base}{path}", timeout=120,
                   json={"model": ORGANISM_SERVED_NAME, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    assert r.json()["steering"] == {"map": ORGANISM_MAP_NAME, "alpha": 2.0, "applied": True,
                                    "mode": "always"}
