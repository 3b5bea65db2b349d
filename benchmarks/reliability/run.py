"""``make reliability``: start ``adaras serve`` (the arithmetic organism, 127.0.0.1, with an API
key), then the full load with faults (32 users, 60 s) and the full schema fuzz (the
fuzzer's default bounds), then stop the server. Reports go to --out (JSON per tool).

    python benchmarks/reliability/run.py [--out out/reliability] [--users 32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KEY = "reliability-key"


def _tool(name: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(f"reliability_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "out" / "reliability")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fuzz-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "ADARAS_NEURON_MAPS"}
    with open(args.out / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "adaras_vllm", "serve", "--organism", "arith", "--host",
             "127.0.0.1", "--port", str(port), "--api-key", KEY], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                print((args.out / "server.log").read_text()[-3000:])
                return 1
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("server not healthy within 300 s")
                return 1
            time.sleep(1)
        load = _tool("load_faults").main([
            "--url", url, "--api-key", KEY, "--users", str(args.users), "--seconds",
            str(args.seconds), "--server-pids", str(server.pid),
            "--out", str(args.out / "load.json")])
        fuzz = _tool("schema_fuzz").main([
            "--url", url, "--api-key", KEY, "--seconds", str(args.fuzz_seconds),
            "--out", str(args.out / "fuzz.json")])
        print(f"\nreliability: load {'PASS' if load == 0 else 'FAIL'}, "
              f"fuzz {'PASS' if fuzz == 0 else 'FAIL'} (reports in {args.out})")
        return 0 if load == 0 and fuzz == 0 else 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
