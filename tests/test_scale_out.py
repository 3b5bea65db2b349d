"""Steering that holds in every process of the ways vLLM scales on one host: several API
server processes, data parallelism, and a worker whose steer op does nothing (it must
refuse to start). Each steered answer equals the same request on a solo server."""

from __future__ import annotations

import httpx
import pytest
from conftest import RunningServer, free_port
from scale_helpers import (
    ASKS,
    ENGINE_FLAGS,
    QUESTIONS,
    adaras_serve,
    answers,
    chat,
    clean_env,
    metric,
    run_until_exit,
    solo_answers,
)

from adaras_vllm.organism.assets import ORGANISMS

pytestmark = pytest.mark.engine

KEY = "scale-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    return solo_answers(tmp_path_factory.mktemp("solo"))


@pytest.fixture(scope="module")
def two_api_processes(tmp_path_factory):
    """``--api-server-count 2`` with an API key, started from an environment that names
    another map (a stale node): the engine's configuration must win everywhere."""
    arith_map = ORGANISMS["arith"].files()[1]
    port = free_port()
    cmd = adaras_serve(port, "--organism", "modes", "--api-server-count", "2",
                       "--api-key", KEY, *ENGINE_FLAGS)
    env = clean_env(ADARAS_NEURON_MAPS=f"modes={arith_map}")
    log = tmp_path_factory.mktemp("api2") / "server.log"
    with RunningServer(cmd, env, log, port) as server:
        yield server.base


def _api_processes_seen(base: str, tries: int = 60) -> set[int]:
    """Fresh connections until both API processes answered ``/v1/steering/status``."""
    seen: set[int] = set()
    for _ in range(tries):
        with httpx.Client() as fresh:  # a new connection: the kernel picks a process
            seen.add(fresh.get(f"{base}/v1/steering/status", headers=AUTH).json()[
                "api_process"])
        if len(seen) == 2:
            break
    return seen


def test_every_api_process_serves_the_steering_routes(two_api_processes):
    assert len(_api_processes_seen(two_api_processes)) == 2


def test_workers_steer_with_the_engines_maps_not_a_stale_environment(two_api_processes):
    status = httpx.get(f"{two_api_processes}/v1/steering/status", headers=AUTH).json()
    assert [r["maps"] for r in status["ranks"]] == [["modes"]]
    assert status["ranks"][0]["self_test"]["changed"] == {"prefill": True, "decode": True}


def test_every_api_process_refuses_a_bad_alpha_with_a_400_naming_the_field(two_api_processes):
    for _ in range(12):
        with httpx.Client() as fresh:
            r = fresh.post(f"{two_api_processes}/v1/chat/completions", headers=AUTH, json={
                "model": "adaras-organism-modes", "max_tokens": 4, "steer_alpha": "abc",
                "messages": [{"role": "user", "content": "1+1"}]})
        assert r.status_code == 400 and "steer_alpha" in r.text


def test_every_api_process_asks_for_the_api_key(two_api_processes):
    for _ in range(8):
        with httpx.Client() as fresh:
            assert fresh.get(f"{two_api_processes}/v1/steering/maps").status_code == 401


def test_answers_through_two_api_processes_equal_the_solo_server(two_api_processes, solo):
    assert answers(two_api_processes, AUTH) == solo


def test_metrics_add_up_across_api_processes(two_api_processes):
    name = "adaras_steered_requests_total"
    before = metric(two_api_processes, name, AUTH)
    for i in range(6):
        with httpx.Client():
            chat(two_api_processes, QUESTIONS[i % len(QUESTIONS)], AUTH, steer_alpha=-4.0,
                 steer_mode="always")  # the map's default is adaptive: the gate may not fire
    for _ in range(4):  # whichever process answers /metrics sees every process's counts
        assert metric(two_api_processes, name, AUTH) == before + 6


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory):
    """Two data-parallel engines behind one front end, with the gated modes map."""
    port = free_port()
    cmd = adaras_serve(port, "--organism", "modes", "--data-parallel-size", "2",
                       *ENGINE_FLAGS)
    log = tmp_path_factory.mktemp("dp2") / "server.log"
    env = clean_env()
    bind = env.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind not in ("auto", "nobind") and "|" not in bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"{bind}|{bind}"  # one entry per DP rank
    with RunningServer(cmd, env, log, port) as server:
        yield server.base


def test_both_data_parallel_ranks_report_steering_and_a_passed_self_test(data_parallel):
    ranks = httpx.get(f"{data_parallel}/v1/steering/status").json()["ranks"]
    assert sorted(r["dp_rank"] for r in ranks) == [0, 1]
    assert all(r["maps"] == ["modes"] and all(r["self_test"]["changed"].values())
               for r in ranks)


@pytest.mark.parametrize("rank", [0, 1])
def test_answers_on_each_data_parallel_rank_equal_the_solo_server(data_parallel, solo, rank):
    """Pinned to a rank; adaptive answers carry the gate score of the rank that ran them."""
    got = answers(data_parallel, {"X-data-parallel-rank": str(rank)})
    assert got == solo
    adaptive = [a for a, ask in zip(got, ASKS * len(QUESTIONS)) if "steer_mode" in ask]
    assert all("gate_score" in a["steering"] for a in adaptive)


BREAK_THE_STEER_OP = """
import adaras_vllm.engine.model_patch as model_patch
model_patch.steer_ = lambda x, *args: x  # planted fault: the op does nothing
"""


def test_a_worker_whose_steer_op_does_nothing_refuses_to_start(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BREAK_THE_STEER_OP)
    import os

    env = clean_env(PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                os.environ.get("PYTHONPATH", "")]))
    port = free_port()
    rc, out = run_until_exit(adaras_serve(port, "--organism", "modes", *ENGINE_FLAGS), env,
                             tmp_path / "server.log")
    assert rc not in (0, None), out[-3000:]
    assert "steering self-test failed" in out
    assert "worker rank 0 of DP rank 0 on node" in out
    assert "refusing to start" in out
