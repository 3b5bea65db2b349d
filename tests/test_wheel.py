"""A plain (non-editable) wheel works as documented from any directory: the shipped maps
and organisms are package data, ``server/`` installs as ``adaras_vllm.server``, and no
top-level ``server`` package is installed.

The wheel goes into a fresh virtual environment whose only other path is the test
environment's site-packages (its dependencies: vLLM, torch, ...), never the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, free_port

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", ".cache", "out", "build", "*.egg-info",
                                     "__pycache__", ".pytest_cache", "tests", "benchmarks")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel, built from a copy of the source, installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(dist)], check=True,
                   timeout=300)
    (wheel,) = dist.glob("adaras_vllm-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--quiet", str(wheel)], check=True, timeout=300)
    # Dependencies from the test environment: its site-packages as a plain path entry (its
    # .pth files, among them the checkout's editable install, are not read from there).
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"venv": venv, "python": python, "adaras": venv / "bin" / "adaras",
            "cwd": elsewhere, "site": site}


def _env() -> dict[str, str]:
    drop = {ENV_VAR, "ADARAS_HOME", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(installed: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=installed["cwd"], env=_env(),
                          capture_output=True, text=True, timeout=300)


def test_the_package_is_imported_from_the_wheel_not_the_checkout(installed):
    out = _run(installed, installed["python"], "-c",
               "import adaras_vllm, adaras_vllm.server.app as a; print(adaras_vllm.__file__); "
               "print(a.__file__)")
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(line.startswith(str(installed["site"])) for line in out.stdout.split())


def test_no_top_level_server_package_is_installed(installed):
    out = _run(installed, installed["python"], "-c", "import server")
    assert out.returncode != 0 and "No module named 'server'" in out.stderr


def test_the_shipped_maps_are_listed_by_bare_name(installed):
    out = _run(installed, installed["adaras"], "maps", "list")
    assert out.returncode == 0, out.stderr[-3000:]
    names = out.stdout.split()
    for name in ("aime", "amc", "gsm8k", "math", "humaneval", "mbpp", "aime-qwen3-4b",
                 "organism-arith", "organism-modes"):
        assert name in names


def test_a_shipped_map_is_inspected_by_bare_name(installed):
    out = _run(installed, installed["adaras"], "maps", "inspect", "aime")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Qwen/Qwen3-1.7B" in out.stdout


def test_adaras_serve_with_no_arguments_serves_the_organism(installed, tmp_path):
    port = free_port()
    cmd = [str(installed["adaras"]), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = _env()
    log = tmp_path / "serve.log"
    cwd = os.getcwd()
    os.chdir(installed["cwd"])  # RunningServer starts the process in the current directory
    try:
        with RunningServer(cmd, env, log, port) as server:
            models = httpx.get(f"{server.base}/v1/models").json()["data"]
            maps = httpx.get(f"{server.base}/v1/steering/maps").json()["data"]
            reply = httpx.post(f"{server.base}/v1/completions", timeout=120, json={
                "model": models[0]["id"], "prompt": "47+18-23+35", "max_tokens": 4,
                "temperature": 0, "steer_alpha": -2, "steer_mode": "always"}).json()
    finally:
        os.chdir(cwd)
    assert [m["id"] for m in models] == ["adaras-organism-modes"]
    assert [m["name"] for m in maps] == ["modes"]
    assert reply["steering"]["applied"] is True, json.dumps(reply)[:2000]
    assert models[0]["root"] == str(installed["site"] / "adaras_vllm" / "models" /
                                    "organism-modes")
