"""Shared by the scale-out tests: start ``adaras serve`` / ``vllm serve`` processes on the
committed modes organism, and ask them the same questions as a solo server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import REPO, RunningServer, free_port

from adaras_vllm.organism.assets import ORGANISMS

ORGANISM = ORGANISMS["modes"]
MODEL_DIR, MAP_PATH = ORGANISM.files()
SERVED = ORGANISM.served_name
#: Each question at several alphas (every request its own alpha) and in adaptive mode.
QUESTIONS = ["47+18-23+35", "12+7", "88-19+4"]
ASKS = [dict(steer_alpha=a) for a in (0.0, -4.0, -2.5)] + [
    dict(steer_alpha=-4.0, steer_mode="adaptive")]
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
                "--kv-cache-memory-bytes", str(128 << 20), "--max-num-seqs", "16"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``ADARAS_*`` variable (a fresh node's shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADARAS_")}
    env.update(extra)
    return env


def adaras_serve(port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "adaras_vllm", "serve", "--host", "127.0.0.1", "--port",
            str(port), *flags]


def chat(base: str, question: str, headers: dict | None = None, **fields) -> dict:
    body = {"model": SERVED, "messages": [{"role": "user", "content": question}],
            "max_tokens": 24, "temperature": 0, **fields}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers or {},
                   timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()
    return {"text": d["choices"][0]["message"]["content"], "steering": d["steering"]}


def answers(base: str, headers: dict | None = None) -> list[dict]:
    return [chat(base, q, headers, **ask) for q in QUESTIONS for ask in ASKS]


def solo_answers(tmp: Path) -> list[dict]:
    """The reference: one ``adaras serve`` with one engine and one API process."""
    port = free_port()
    cmd = adaras_serve(port, "--organism", "modes", *ENGINE_FLAGS)
    with RunningServer(cmd, clean_env(), tmp / "solo.log", port) as server:
        return answers(server.base)


def metric(base: str, name: str, headers: dict | None = None) -> float:
    """Sum of a counter's samples on ``/metrics`` (all label values)."""
    text = httpx.get(f"{base}/metrics", headers=headers or {}, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def run_until_exit(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 300
                   ) -> tuple[int, str]:
    """Run a server that must refuse to start: its exit status and output."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    return rc, log.read_text()


def wait_for_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(1)
    return None


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the server at ``base`` answered ``/health`` before ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False
