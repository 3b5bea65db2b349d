"""The organism experiment's two steps that are not one `adaras` command.

    choose      apply the pre-registered rule (adaras_vllm.evaluate.choose) to a validation
                grid from `adaras eval --neurons ... --alphas ...`, print and write it
    test-split  start `adaras serve` on a free port with a model and its maps, wait for
                /health, run `adaras eval --server` on the test split for each map (off /
                always / adaptive at the map's default alpha), stop the server

Used by `make experiment` and `make experiment-test`; see README "Does steering help?".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADARAS = [sys.executable, "-m", "adaras_vllm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before /health")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server was not healthy after {timeout_s:.0f} s")


def serve_command(model: str, map_specs: list[str], port: int) -> list[str]:
    """The server both organisms are measured through: the engine settings of the
    validation grid (float32, 0.5 GiB KV cache, 256-token context)."""
    maps = [a for spec in map_specs for a in ("--neuron-map", spec)]
    return [*ADARAS, "serve", "--model", model, *maps,
            "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32",
            "--kv-cache-memory-bytes", str(512 << 20), "--max-model-len", "256",
            "--max-num-seqs", "256", "--served-model-name", Path(model).name]


def test_split(args: argparse.Namespace) -> int:
    """One server with every map; per map: off / always / adaptive at its default alpha."""
    from adaras_vllm.maps import NeuronMap

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.out.with_suffix(".server.log"), "w")
    start = time.monotonic()
    proc = subprocess.Popen(serve_command(args.model, args.neuron_map, port), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    failed = 0
    try:
        wait_healthy(url, proc)
        print(f"server {url} up after {time.monotonic() - start:.0f} s ({args.model})",
              flush=True)
        for spec in args.neuron_map:
            name, _, path = spec.partition("=")
            neuron_map = NeuronMap.load(path)
            alpha = neuron_map.default_alpha
            modes = "off,always,adaptive" if neuron_map.gate is not None else "off,always"
            out = args.out.with_name(f"{args.out.stem}-{name}.json")
            print(f"map {name}: alpha {alpha:g}, modes {modes} -> {out}", flush=True)
            cmd = [*ADARAS, "eval", "--server", url, "--problems", str(args.problems),
                   f"--alphas=0,{alpha:g}", "--modes", modes, "--steer-map", name,
                   "--max-tokens", str(args.max_tokens), "--out", str(out)]
            failed += subprocess.run(cmd, check=False).returncode != 0
        return int(failed > 0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def choose(args: argparse.Namespace) -> int:
    from adaras_vllm.evaluate.choose import choose_from_file

    chosen = choose_from_file(args.grid, any_sign=args.any_sign)
    text = json.dumps(chosen, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("choose", help="the pre-registered rule on a validation grid")
    c.add_argument("--grid", type=Path, required=True)
    c.add_argument("--out", type=Path)
    c.add_argument("--any-sign", action="store_true",
                   help="let negative alphas win too (RULE_ANY_SIGN)")
    c.set_defaults(func=choose)
    t = sub.add_parser("test-split", help="the test split through a running server")
    t.add_argument("--model", required=True)
    t.add_argument("--neuron-map", required=True, action="append", metavar="NAME=PATH",
                   help="repeatable; each map is measured at its default alpha")
    t.add_argument("--problems", type=Path, required=True)
    t.add_argument("--max-tokens", type=int, default=128)
    t.add_argument("--out", type=Path, required=True)
    t.set_defaults(func=test_split)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
