"""``adaras serve`` with a gated map: ``steer_mode: "adaptive"`` through the HTTP routes.

The server's ``steering`` object reports the gate's ``gate_score`` (p_good) and
``gate_threshold``; ``applied`` says whether it fired; the tokens follow that decision;
the decisions are counted per map; a map without a gate refuses ``adaptive`` naming
``steer_mode``.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, free_port
from gated_maps import gated_map_for

pytestmark = pytest.mark.engine

MODEL = "tiny"
ALPHA = 4.0


@pytest.fixture(scope="module")
def setup(qwen3_tiny):
    model_dir, path, prompts, scores, gate = gated_map_for("qwen3", seed=7)
    return model_dir, path, qwen3_tiny[1]["beta_map"], prompts, scores, gate


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    model_dir, gated, plain, *_ = setup
    port = free_port()
    cmd = [sys.executable, "-m", "adaras_vllm", "serve", str(model_dir),
           "--neuron-map", f"gated_map={gated}", "--neuron-map", f"beta_map={plain}",
           "--default-steer-alpha", "0", "--served-model-name", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "1024", "--kv-cache-memory-bytes",
           str(256 << 20), "--max-num-seqs", "16", "--max-num-batched-tokens", "64",
           "--enable-prefix-caching"]
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    log = tmp_path_factory.mktemp("adaras-adaptive") / "server.log"
    with RunningServer(cmd, env, log, port) as running:
        yield running.base


def complete(server: str, prompt_ids: list[int], **fields) -> dict:  # noqa: ANN003
    r = httpx.post(f"{server}/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": prompt_ids, "max_tokens": 12, "temperature": 0,
        "ignore_eos": True, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_adaptive_responses_report_the_gate_score_and_follow_it(server, setup):
    *_, prompts, scores, gate = setup
    for ids, want in zip(prompts, scores):
        adaptive = complete(server, ids, steer_mode="adaptive", steer_alpha=ALPHA)
        s = adaptive["steering"]
        assert abs(s["gate_score"] - want) < 1e-4 and s["gate_threshold"] == gate.threshold
        fired = want < gate.threshold
        assert s["applied"] is fired and s["mode"] == "adaptive" and s["alpha"] == ALPHA
        twin = complete(server, ids, steer_alpha=ALPHA if fired else 0.0)
        assert adaptive["choices"][0]["text"] == twin["choices"][0]["text"]


def test_a_streamed_adaptive_chat_reports_the_gate_on_its_last_chunk(server, setup):
    r = httpx.post(f"{server}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "what is 2 + 2?"}],
        "max_tokens": 8, "stream": True, "vllm_xargs": {"steer_mode": "adaptive",
                                                        "steer_alpha": ALPHA}})
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    audit = chunks[-1]["steering"]
    assert isinstance(audit["gate_score"], float) and 0.0 <= audit["gate_score"] <= 1.0
    assert audit["applied"] is (audit["gate_score"] < audit["gate_threshold"])


def test_adaptive_on_a_map_without_a_gate_is_a_400_naming_steer_mode(server, setup):
    r = httpx.post(f"{server}/v1/completions", json={
        "model": MODEL, "prompt": "x", "steer_mode": "adaptive", "steer_map": "beta_map",
        "steer_alpha": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "steer_mode" and "maps with a gate: gated_map" in err["message"]


def test_gate_decisions_are_counted_per_map_and_decision(server, setup):
    prompts = setup[3]
    def count(text: str, decision: str) -> float:  # noqa: E306
        key = f'adaras_gate_decisions_total{{decision="{decision}",map="gated_map"}}'
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(key))

    before = httpx.get(f"{server}/metrics").text
    for ids in prompts:
        complete(server, ids, steer_mode="adaptive", steer_alpha=ALPHA)
    after = httpx.get(f"{server}/metrics").text
    fired = sum(s < setup[5].threshold for s in setup[4])
    assert count(after, "steered") - count(before, "steered") == fired
    assert count(after, "not_steered") - count(before, "not_steered") == len(prompts) - fired


def test_the_maps_route_describes_the_gate(server, setup):
    data = httpx.get(f"{server}/v1/steering/maps").json()["data"]
    gate = {m["name"]: m["gate"] for m in data}
    assert gate["beta_map"] is None
    assert gate["gated_map"]["features"] == 24 and gate["gated_map"]["hidden"] == 8
    assert gate["gated_map"]["threshold"] == setup[5].threshold


def test_a_client_cannot_choose_another_requests_gate_key(server, setup):
    prompts, scores = setup[3], setup[4]
    a = complete(server, prompts[2], steer_mode="adaptive", steer_alpha=ALPHA,
                 vllm_xargs={"adaras_gate_key": "fixed"})
    b = complete(server, prompts[-1], steer_mode="adaptive", steer_alpha=ALPHA,
                 vllm_xargs={"adaras_gate_key": "fixed"})
    assert abs(a["steering"]["gate_score"] - scores[2]) < 1e-4
    assert abs(b["steering"]["gate_score"] - scores[-1]) < 1e-4


def test_eval_against_the_server_reports_what_the_gate_decided(server, setup, tmp_path):
    import subprocess

    model_dir, _, _, prompts, _, gate = setup
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    problems = tmp_path / "p.jsonl"
    questions = [tok.decode(ids) for ids in prompts[2:6]]
    problems.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "1"}) + "\n"
                                for i, q in enumerate(questions)))
    proc = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "eval", "--server", server, "--problems",
         str(problems), "--alphas", f"0,{ALPHA}", "--modes", "off,always,adaptive",
         "--max-tokens", "4", "--out", str(tmp_path / "e.json")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads((tmp_path / "e.json").read_text())["answers"]
    adaptive = [a for a in answers if a["mode"] == "adaptive"]
    assert len(adaptive) == 4
    for a in adaptive:
        assert 0.0 <= a["gate_score"] <= 1.0
        assert a["steered"] is (a["gate_score"] < gate.threshold)
