"""The README's main job: ``adaras serve`` with no model serves the default committed
organism with its map, prints its URL and an example pair of requests whose answers differ
(alpha 0 vs the map's default), and ``adaras eval --server`` and the lm-eval task measure it
exactly as the offline harness does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, free_port

from adaras_vllm.maps import NeuronMap
from adaras_vllm.organism.assets import DEFAULT_ORGANISM, ORGANISMS
from adaras_vllm.organism.task import generate_split, solve, trace_mode, write_problems

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[1]
SERVED = ORGANISMS[DEFAULT_ORGANISM]
EXAMPLE_QUESTION = SERVED.example_question
ORGANISM_DIR, ORGANISM_MAP = SERVED.model_dir, SERVED.map_path
ORGANISM_MAP_NAME, ORGANISM_SERVED_NAME = SERVED.map_name, SERVED.served_name
SERVED_MAP = NeuronMap.load(ORGANISM_MAP)
ORGANISM_DEFAULT_ALPHA = SERVED_MAP.default_alpha


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


def test_the_printed_pair_names_the_organism_and_both_alphas(server):
    printed = server.log.read_text()
    assert f"the {SERVED.name} organism" in printed
    assert '"steer_alpha": 0}' in printed
    assert f'"steer_alpha": {ORGANISM_DEFAULT_ALPHA:g}}}' in printed


def test_the_printed_pair_gives_different_answers_and_the_steered_one_is_right(server):
    plain = _chat(server, EXAMPLE_QUESTION, 0.0)
    steered = _chat(server, EXAMPLE_QUESTION, ORGANISM_DEFAULT_ALPHA)
    texts = [b["choices"][0]["message"]["content"] for b in (plain, steered)]
    assert texts[0] != texts[1], texts
    assert f"\\boxed{{{solve(EXAMPLE_QUESTION)}}}" in texts[1], texts
    if SERVED.name == "modes":  # unsteered it answers hasty; steered it works the steps
        assert [trace_mode(t) for t in texts] == ["hasty", "careful"], texts
    assert plain["steering"]["applied"] is False and steered["steering"]["applied"] is True
    assert steered["steering"]["map"] == ORGANISM_MAP_NAME


def test_eval_against_the_server_equals_the_offline_harness(server, tmp_path):
    problems = write_problems(tmp_path / "test.jsonl", generate_split("test", 24, seed=7))
    common = ["--problems", str(problems), "--alphas", f"0,{ORGANISM_DEFAULT_ALPHA:g}",
              "--max-tokens", "128"]
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
    assert ({s["alpha"]: s["accuracy"] for s in on["summary"]}
            == {s["alpha"]: s["accuracy"] for s in off["summary"]})
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
    """No steer_* field given: the map's calibrated defaults (alpha, mode, positions) are
    applied, and the steering object says so, whichever route the request took."""
    r = httpx.post(f"{server.base}{path}", timeout=120,
                   json={"model": ORGANISM_SERVED_NAME, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    steering = r.json()["steering"]
    assert {k: steering[k] for k in ("map", "alpha", "applied", "mode", "positions")} == {
        "map": ORGANISM_MAP_NAME, "alpha": ORGANISM_DEFAULT_ALPHA, "applied": True,
        "mode": SERVED_MAP.default_mode, "positions": SERVED_MAP.default_positions}


def _lm_eval_accuracy(server, tmp_path, problems, alpha: float) -> float:  # noqa: ANN001
    """The shipped lm-eval task, pointed at ``problems``, run against the server."""
    import yaml

    task = yaml.safe_load((REPO / "benchmarks" / "lm_eval_tasks" /
                           "adaras_organism.yaml").read_text())
    task["dataset_kwargs"]["data_files"]["test"] = str(problems)
    tasks = tmp_path / f"tasks-{alpha:g}"
    tasks.mkdir()
    (tasks / "adaras_organism.yaml").write_text(yaml.safe_dump(task))
    out = tmp_path / f"lm-eval-{alpha:g}"
    model_args = (f"model={ORGANISM_SERVED_NAME},base_url={server.base}/v1/chat/completions,"
                  "num_concurrent=8,tokenizer_backend=None,tokenized_requests=False")
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions",
         "--model_args", model_args, "--apply_chat_template", "--include_path", str(tasks),
         "--tasks", "adaras_organism", "--gen_kwargs",
         f"steer_alpha={alpha:g},steer_mode=always",  # as adaras eval asks
         "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text())["results"]["adaras_organism"]["exact_match,boxed"]


def test_the_lm_eval_task_gives_the_same_accuracy_as_adaras_eval(server, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional `harness` extra: "
                        "make lm-eval-check installs it and runs this test")
    problems = write_problems(tmp_path / "test.jsonl", generate_split("test", 40, seed=3))
    default = ORGANISM_DEFAULT_ALPHA
    ours = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "eval", "--server", server.base, "--problems",
         str(problems), "--alphas", f"0,{default:g}", "--max-tokens", "128",
         "--out", str(tmp_path / "ours.json")], capture_output=True, text=True, timeout=600)
    assert ours.returncode == 0, ours.stderr[-3000:]
    summary = json.loads((tmp_path / "ours.json").read_text())["summary"]
    by_alpha = {s["alpha"]: s["accuracy"] for s in summary}
    for alpha in (0.0, default):
        assert _lm_eval_accuracy(server, tmp_path, problems, alpha) == pytest.approx(
            by_alpha[alpha]), alpha
