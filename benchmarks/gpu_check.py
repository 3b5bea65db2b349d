"""The GPU check (``make gpu-check``): on a CUDA machine with vLLM installed, run what the CPU
machines cannot, and print one summary line per check.

1. the environment (Python, torch, CUDA, GPU, vLLM version, which model runner vLLM picks);
2. ``tests/test_cuda_graph.py`` (the steer op captured in a CUDA graph, replayed with new
   buffers);
3. the HF-oracle engine tests with vLLM's defaults on CUDA: the V2 model runner, CUDA
   graphs, async scheduling on;
4. the same tests with ``enforce_eager`` (``ADARAS_TEST_EAGER=1``);
5. the overhead benchmark (plugin off / on, alternated), bf16, Qwen3-0.6B shapes.

Each check runs in its own process with a time limit, so one failure does not hide the
others. Exit status 0 only if every check passed.

    python benchmarks/gpu_check.py [--timeout-s 480] [--skip-bench] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORACLE_TESTS = ["tests/test_engine_qwen3.py", "tests/test_engine_archs.py",
                "tests/test_engine_async.py", "tests/test_engine_preemption.py",
                "tests/test_engine_pp.py",  # PP=2 runs where two GPUs are visible
                "tests/test_gate_engine.py"]  # the adaptive gate: HF-equal scores, decisions

ENV_PROBE = """
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_count"] = torch.cuda.device_count()
try:
    import vllm, vllm.envs as envs
    info["vllm"] = vllm.__version__
    info["VLLM_USE_V2_MODEL_RUNNER"] = getattr(envs, "VLLM_USE_V2_MODEL_RUNNER", None)
except Exception as e:  # noqa: BLE001 - report, do not fail the probe
    info["vllm"] = f"not importable: {e}"
print("PROBE " + json.dumps(info))
"""


def run(name: str, cmd: list[str], env: dict[str, str], timeout_s: int) -> dict:
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        status = "PASS" if proc.returncode == 0 else "FAIL"
        out = proc.stdout + proc.stderr
        rc = proc.returncode
    except subprocess.TimeoutExpired as e:
        status, rc = "TIMEOUT", None
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    tail = [ln for ln in out.splitlines() if ln.strip()][-3:]
    if status == "PASS" and any(" skipped" in ln and " passed" not in ln for ln in tail):
        status = "SKIP"
    return {"check": name, "status": status, "rc": rc,
            "seconds": round(time.monotonic() - start, 1), "tail": tail, "output": out[-20000:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout-s", type=int, default=480, help="per check (default %(default)s)")
    p.add_argument("--skip-bench", action="store_true", help="leave out the overhead benchmark")
    p.add_argument("--out", type=Path, help="write every check's output here (JSON)")
    args = p.parse_args(argv)

    base = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    probe = subprocess.run([sys.executable, "-c", ENV_PROBE], cwd=REPO, env=base,
                           capture_output=True, text=True, timeout=300)
    line = next((ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")), None)
    info = json.loads(line.removeprefix("PROBE ")) if line else {"error": probe.stderr[-2000:]}
    print("ENV  " + json.dumps(info), flush=True)
    if not info.get("cuda_available"):
        print("SKIP every check: no CUDA device visible to torch")
        return 0

    pytest = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"]
    checks = [
        ("cuda-graph steer op", pytest + ["tests/test_cuda_graph.py"], base),
        ("oracle, V2 runner + CUDA graphs + async scheduling", pytest + ORACLE_TESTS,
         {**base, "ADARAS_TEST_ASYNC_SCHEDULING": "1"}),
        ("oracle, enforce_eager", pytest + ORACLE_TESTS, {**base, "ADARAS_TEST_EAGER": "1"}),
    ]
    if not args.skip_bench:
        checks.append(("overhead benchmark", [sys.executable, "benchmarks/overhead.py",
                                               "--rounds", "2"], base))
    results = []
    for name, cmd, env in checks:
        r = run(name, cmd, env, args.timeout_s)
        results.append(r)
        print(f"{r['status']:<7} {name} ({r['seconds']} s): {' | '.join(r['tail'])}",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"env": info, "checks": results}, indent=1))
    return 0 if all(r["status"] in ("PASS", "SKIP") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
