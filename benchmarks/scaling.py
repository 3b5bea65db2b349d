"""Steered decode throughput with one data-parallel engine and with two, on this machine.

For each model (the 1M-parameter modes organism, and a random-weight Qwen3 of about 110M
parameters with a random 400-neuron map), two ``adaras serve`` runs, one after the other:
``--data-parallel-size 1`` with its engine bound to core 0, then ``--data-parallel-size 2``
with one engine per core (``VLLM_CPU_OMP_THREADS_BIND=0|1``). On each, rounds alternate a steered batch (every
request its own alpha) and an unsteered batch of the same prompts; each request decodes a
fixed number of tokens (``ignore_eos``). Printed: tokens/s per side and the DP2/DP1 ratio,
steered and unsteered, from the same run. The front end (API server, engine-core loops)
shares the same two cores, as it would on a small node.

    python benchmarks/scaling.py --out out/bench/scaling.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from benchlib import environment, table

REPO = Path(__file__).resolve().parents[1]
SERVED = "adaras-organism-modes"
QUESTIONS = ["47+18-23+35", "12+7", "88-19+4", "31+45-9", "5+66-12", "70-33+8"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A random-weight Qwen3 of about 110M parameters (8 layers, hidden 1024, intermediate
#: 3072), so that decode is compute-bound rather than front-end-bound as the 1M organism is.
MEDIUM = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 8,
          "num_attention_heads": 16, "num_key_value_heads": 8, "initializer_range": 0.02}


def model_flags(model: str, cache: Path) -> list[str]:
    if model == "organism":
        return ["--organism", "modes"]
    from adaras_vllm.tiny_model import build_tiny_model, random_neuron_map

    model_dir = build_tiny_model(cache / "scaling-medium-qwen3", "qwen3", **MEDIUM)
    map_path = cache / "scaling-medium-map.safetensors"
    if not map_path.is_file():
        random_neuron_map(model_dir, "medium", per_layer=50, default_alpha=1.0).save(map_path)
    return [str(model_dir), "--neuron-map", f"medium={map_path}",
            "--served-model-name", SERVED]


def start(dp: int, port: int, log: Path, flags: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADARAS_")}
    env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if dp == 1 else "0|1"
    cmd = [sys.executable, "-m", "adaras_vllm", "serve", *flags, "--host",
           "127.0.0.1", "--port", str(port), "--data-parallel-size", str(dp), "--dtype",
           "float32", "--enforce-eager", "--max-model-len", "256", "--max-num-seqs", "64",
           "--kv-cache-memory-bytes", str(256 << 20)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("server not healthy in time")


async def batch(base: str, n: int, tokens: int, steered: bool) -> tuple[int, float]:
    """``n`` concurrent requests; steered ones each get a distinct alpha. (tokens, seconds)"""
    async def one(client: httpx.AsyncClient, i: int) -> int:
        alpha = -4.0 + 0.01 * i if steered else 0.0
        r = await client.post(f"{base}/v1/chat/completions", json={
            "model": SERVED, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "steer_alpha": alpha,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})
        r.raise_for_status()
        body = r.json()
        assert body["steering"]["applied"] is steered, body["steering"]
        return int(body["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(client, i) for i in range(n)))
        return sum(counts), time.perf_counter() - t0


def measure(dp: int, args: argparse.Namespace, logdir: Path, flags: list[str]) -> dict:
    port = free_port()
    proc = start(dp, port, logdir / f"scaling-dp{dp}.log", flags)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(batch(base, args.requests, 8, True))  # warm-up
        rates: dict[str, list[float]] = {"steered": [], "unsteered": []}
        for _ in range(args.rounds):
            for kind in ("steered", "unsteered"):
                toks, secs = asyncio.run(batch(base, args.requests, args.tokens,
                                               kind == "steered"))
                rates[kind].append(toks / secs)
        return rates
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models", nargs="+", choices=("organism", "medium"),
                        default=["organism", "medium"])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adaras-vllm"))
    args = parser.parse_args()
    logdir = Path(args.out).parent if args.out else Path("out/bench")
    logdir.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(), "requests": args.requests,
              "tokens": args.tokens, "rounds": args.rounds}
    rows = []
    for model in args.models:
        flags = model_flags(model, Path(args.cache))
        runs = {f"dp{dp}": measure(dp, args, logdir, flags) for dp in (1, 2)}
        for kind in ("steered", "unsteered"):
            one = statistics.median(runs["dp1"][kind])
            two = statistics.median(runs["dp2"][kind])
            runs[f"{kind}_ratio_dp2_over_dp1"] = two / one
            rows.append([model, kind, one, two, two / one])
        result[model] = runs
    print(table(["model", "requests", "DP=1 tok/s", "DP=2 tok/s", "DP2/DP1"], rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
