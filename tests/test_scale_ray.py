"""Ray Serve LLM (``make scale-check``): two replicas of the modes organism on a local
two-node Ray cluster started from a shell without ``ADARAS_*`` variables. The maps travel
in the engine's ``additional_config``; clients steer through ``vllm_xargs``; every answer
equals the same request on a solo ``adaras serve``. (vLLM 0.32's CPU backend cannot use
Ray executors; Ray Serve LLM runs each replica's engine with the multiprocessing executor.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_port
from scale_helpers import (
    ASKS,
    MAP_PATH,
    MODEL_DIR,
    QUESTIONS,
    SERVED,
    clean_env,
    solo_answers,
)

from adaras_vllm.engine.params import SteeringDefaults
from adaras_vllm.engine.steering_config import SteeringConfig

pytestmark = [pytest.mark.engine, pytest.mark.scale]
ray = pytest.importorskip("ray", reason="make scale-check installs the ray extra")

DRIVER = r"""
import json, sys, time
import ray
from ray import serve
from ray.serve.llm import LLMConfig, build_openai_app
import ray._private.state as ray_state  # the GCS's actor table (no dashboard needed)

address, model_dir, served, config, port = sys.argv[1:]
ray.init(address=address)
serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
llm = LLMConfig(
    model_loading_config={"model_id": served, "model_source": model_dir},
    engine_kwargs={"dtype": "float32", "enforce_eager": True, "max_model_len": 256,
                   "kv_cache_memory_bytes": 128 << 20, "max_num_seqs": 16,
                   "additional_config": {"adaras": json.loads(config)}},
    # the replica actor takes no CPU of its own: its engine's one-CPU bundle is the
    # replica's whole footprint, so one replica fits each one-CPU node
    deployment_config={"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
    placement_group_config={"bundles": [{"CPU": 1}], "strategy": "STRICT_PACK"},
    runtime_env={"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}},
)
app = build_openai_app({"llm_configs": [llm],
                        "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}})
serve.run(app, blocking=False)
nodes = sorted(a["Address"]["NodeID"] for a in ray_state.actors().values()
               if a["State"] == "ALIVE" and "LLMServer" in a.get("ActorClassName", ""))
print("READY " + json.dumps({"replica_nodes": nodes}), flush=True)
while True:
    time.sleep(5)
"""


RAY_CLI = str(Path(sys.executable).with_name("ray"))


def _ray(*args: str, tmp: str) -> None:
    subprocess.run([RAY_CLI, *args], env=clean_env(RAY_TMPDIR=tmp), check=True,
                   capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray start --head`` plus a second ``ray start --address`` node, one CPU each."""
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        _ray("start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={tmp}", *common, tmp=tmp)
        _ray("start", f"--address=127.0.0.1:{port}", *common, tmp=tmp)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY_CLI, "stop", "--force"], env=clean_env(), capture_output=True,
                       timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_serve(ray_cluster, tmp_path_factory):
    config = SteeringConfig.from_spec(f"modes={MAP_PATH}", SteeringDefaults(8.0, None))[0]
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "driver.log"
    out = open(log, "w")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, ray_cluster, str(MODEL_DIR), SERVED,
         json.dumps(config.to_dict()), str(port)],
        env=clean_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    ready = None
    while time.monotonic() < deadline and driver.poll() is None and ready is None:
        text = log.read_text()
        if "No available node types can fulfill" in text:
            break  # unschedulable: say so now rather than at the deadline
        ready = next((ln for ln in text.splitlines() if ln.startswith("READY ")), None)
        time.sleep(2)
    try:
        assert ready is not None, log.read_text()[-4000:]
        yield base, json.loads(ready.removeprefix("READY "))
    finally:
        driver.terminate()
        driver.wait(timeout=60)


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    return [a["text"] for a in solo_answers(tmp_path_factory.mktemp("solo"))]


def _ask(base: str, question: str, xargs: dict) -> str:
    body = {"model": SERVED, "messages": [{"role": "user", "content": question}],
            "max_tokens": 24, "temperature": 0, "vllm_xargs": xargs}
    for _ in range(60):  # replicas may still be starting behind the ingress
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        if r.status_code == 200:
            return r.json()["choices"][0]["message"]["content"]
        time.sleep(5)
    raise AssertionError(r.text)


def test_the_two_replicas_run_on_the_two_nodes(ray_serve):
    _, info = ray_serve
    assert len(set(info["replica_nodes"])) == 2


def test_answers_steered_through_vllm_xargs_equal_the_solo_server(ray_serve, solo):
    base, _ = ray_serve
    for _ in range(2):  # twice: the router spreads requests over both replicas
        got = [_ask(base, q, ask) for q in QUESTIONS for ask in ASKS]
        assert got == solo
