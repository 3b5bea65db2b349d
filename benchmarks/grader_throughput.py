"""How many candidates per second the code grader runs, by pool size and isolation.

Two workloads:
- `paper MBPP`: the AdaRAS paper's 120 MBPP answers (our extraction of each) against the
  assert in their questions, repeated `--rounds` times: real model code, mostly quick, two
  of them loop until the 10 s limit (which then dominates the time);
- `trivial`: the same number of one-line passing candidates: the sandbox's own cost per
  candidate (two Python start-ups, launcher and candidate, plus, with namespaces, building
  its tmpfs root).

    python benchmarks/grader_throughput.py [--rounds 2] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mbpp_regrade import DEFAULT_TRACES, question_asserts  # noqa: E402

from adaras_vllm.coding.problems import extract_code  # noqa: E402
from adaras_vllm.coding.sandbox import (  # noqa: E402
    Job,
    SandboxLimits,
    SandboxPool,
    SandboxUnavailable,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--wall-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in args.traces.read_text().splitlines() if line.strip()]
    jobs = [Job(extract_code(r["answer_content"]), question_asserts(r["question"]))
            for r in rows] * args.rounds
    print(f"{len(jobs)} candidates ({len(rows)} paper MBPP answers x {args.rounds}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    trivial = [Job("def f():\n    return 1\n", "assert f() == 1\n")] * len(jobs)
    print(f"{'workload':<11} {'isolation':<12} {'workers':>7} {'seconds':>8} {'cand/s':>7}  "
          "statuses")
    for name, work in (("paper MBPP", jobs), ("trivial", trivial)):
        for isolate, label in ((True, "namespaces"), (False, "limits only")):
            for workers in [int(w) for w in args.workers.split(",")]:
                pool = SandboxPool(workers, SandboxLimits(wall_s=args.wall_s), isolate=isolate)
                start = time.monotonic()
                try:
                    results = pool.run(work)
                except SandboxUnavailable as e:
                    print(f"{name:<11} {label:<12} {workers:>7}  not run here: {e}")
                    break
                seconds = time.monotonic() - start
                statuses = dict(sorted(Counter(r.status for r in results).items()))
                print(f"{name:<11} {label:<12} {workers:>7} {seconds:>8.1f} "
                      f"{len(work) / seconds:>7.1f}  {statuses}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
