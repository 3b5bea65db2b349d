"""Regrade the AdaRAS paper's MBPP traces with our code grader and compare with their labels.

The paper's file (`../shared/reference/adaras-paper/data/Mbpp/Mbpp_results_*_filtered.jsonl`)
holds, per trace, the question (MBPP's task and its first assert, as EvalPlus poses it), the
model's answer (`answer_content`), the code the paper extracted from it (`extract_code`) and
`is_good`, which the paper decided with EvalPlus's larger MBPP+ test sets. Only the assert in
the question is available here, so agreement is not expected to be total: the table shows
where and why the two disagree.

Two checks:
1. extraction: does our `extract_code(answer)` (both rules) give the paper's `extract_code`?
2. grading, through the sandbox pool: our extraction of each answer against the question's
   assert(s), vs `is_good`.

    python benchmarks/mbpp_regrade.py [--traces FILE] [--out FILE] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaras_vllm.coding.problems import extract_code  # noqa: E402
from adaras_vllm.coding.sandbox import Job, SandboxLimits, SandboxPool  # noqa: E402

DEFAULT_TRACES = (REPO.parent / "shared" / "reference" / "adaras-paper" / "data" / "Mbpp"
                  / "Mbpp_results_Qwen3-32B_filtered.jsonl")


def question_asserts(question: str) -> str:
    """The assert lines of an EvalPlus-style MBPP question (the task's first test)."""
    lines = [ln.strip() for ln in question.splitlines() if ln.strip().startswith("assert ")]
    if not lines:
        raise ValueError(f"no assert in question {question[:80]!r}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--out", type=Path, default=Path("mbpp-regrade.json"))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    rows = [json.loads(line) for line in args.traces.read_text().splitlines() if line.strip()]
    ours = [extract_code(r["answer_content"]) for r in rows]
    same_code = [o.strip() == r["extract_code"].strip() for o, r in zip(ours, rows)]
    same_last = [extract_code(r["answer_content"], "last").strip() == r["extract_code"].strip()
                 for r in rows]
    pool = SandboxPool(args.workers, SandboxLimits(wall_s=10))
    jobs = [Job(code, question_asserts(r["question"])) for code, r in zip(ours, rows)]
    start = time.monotonic()
    results = pool.run(jobs)
    seconds = time.monotonic() - start
    labels = [bool(r["is_good"]) if not isinstance(r["is_good"], str)
              else r["is_good"].lower() == "true" for r in rows]
    passed = [res.passed for res in results]
    table = Counter((lab, p) for lab, p in zip(labels, passed))
    agree = table[True, True] + table[False, False]
    per_problem: dict[str, Counter] = {}
    for r, lab, res in zip(rows, labels, results):
        c = per_problem.setdefault(str(r["id"]), Counter())
        c[f"{'good' if lab else 'bad'}_{'pass' if res.passed else res.status}"] += 1
    disagreements = [
        {"id": r["id"], "_id": r["_id"], "is_good": lab, "status": res.status,
         "reason": res.reason}
        for r, lab, res in zip(rows, labels, results) if lab != res.passed
    ]
    report = {
        "traces": str(args.traces), "n": len(rows), "problems": len(per_problem),
        "extraction_identical_first_block": sum(same_code),
        "extraction_identical_last_python_block": sum(same_last),
        "is_good_and_passes": table[True, True], "is_good_but_fails": table[True, False],
        "is_bad_but_passes": table[False, True], "is_bad_and_fails": table[False, False],
        "agreement": agree / len(rows),
        "statuses": dict(Counter(res.status for res in results)),
        "seconds": round(seconds, 2), "workers": pool.workers,
        "isolation": results[0].isolation if results else "",
        "per_problem": {k: dict(v) for k, v in sorted(per_problem.items(), key=lambda kv:
                                                      int(kv[0]))},
        "disagreements": disagreements,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    n = len(rows)
    print(f"{n} traces of {len(per_problem)} problems from {args.traces.name}")
    print(f"extraction: ours equals the paper's extract_code in {sum(same_code)}/{n} "
          f"(first block, the default); {sum(same_last)}/{n} with --code-block last")
    print("                 passes question's assert   fails it")
    print(f"is_good = true   {table[True, True]:>24}   {table[True, False]:>8}")
    print(f"is_good = false  {table[False, True]:>24}   {table[False, False]:>8}")
    print(f"agreement {agree}/{n} = {100 * agree / n:.1f}%; statuses "
          f"{dict(Counter(res.status for res in results))}; {seconds:.1f} s with "
          f"{pool.workers} workers ({results[0].isolation if results else ''})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
