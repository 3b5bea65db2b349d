"""`adaras code import` and `adaras code run`: coding problems from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from adaras_vllm.arg_types import positive_int


def add_sandbox_flags(g: Any) -> None:
    """--allow-unisolated and --sandbox-python: how the sandbox runs candidates (shared by
    every command that runs code)."""
    g.add_argument("--allow-unisolated", action="store_true",
                   help="code: when the sandbox cannot isolate candidates (no root, no user "
                        "namespaces), run them anyway with process limits only: network and "
                        "files are NOT isolated")
    g.add_argument("--sandbox-python", metavar="PATH",
                   help="code: the Python interpreter candidates run on (default: the base "
                        "installation of the running Python); it must be reachable by the "
                        "sandbox's user")


def add_code_commands(subparsers: argparse._SubParsersAction) -> None:
    code = subparsers.add_parser("code", help="coding problems: import, run a candidate")
    commands = code.add_subparsers(dest="code_command", metavar="CODE_COMMAND", required=True)
    imp = commands.add_parser(
        "import", help="convert HumanEval's or MBPP's JSONL (.jsonl.gz too) to our format",
        description="Read HumanEval (task_id, prompt, test, entry_point) or MBPP (task_id, "
        "text, test_list, test_setup_code; sanitized: prompt, test_imports) lines and write "
        "our coding problems format (id, question, tests, entry_point, timeout_s, setup, "
        "reference). Every grading command also reads those files as they are; importing "
        "lets you edit them. --check runs every problem's reference solution (HumanEval's "
        "prompt + canonical_solution, MBPP's code, our reference) against its tests in the "
        "sandbox: exit status 0 only if all pass.")
    imp.add_argument("source", type=Path)
    imp.add_argument("--out", type=Path,
                     help="where to write our format (optional with --check)")
    imp.add_argument("--timeout-s", type=float, metavar="S",
                     help="set this wall-time limit on every problem")
    imp.add_argument("--check", action="store_true",
                     help="run every problem's reference solution against its tests in the "
                          "sandbox; print the failing ones and a summary")
    imp.add_argument("--grader-workers", type=positive_int, metavar="N",
                     help="--check: reference solutions run at once (default: the CPU count)")
    add_sandbox_flags(imp)
    imp.set_defaults(func=_import)
    run = commands.add_parser(
        "run", help="run one candidate program against one problem's tests in the sandbox",
        description="Prints the verdict (pass/fail/timeout/error, with the reason) and what "
        "the candidate printed, as JSON; exit status 0 only for pass.")
    run.add_argument("--problems", type=Path, required=True)
    run.add_argument("--id", required=True, help="the problem's id")
    run.add_argument("candidate", type=Path, help="a file with the response or its code "
                     "('-': standard input); the code is extracted as graders do")
    run.add_argument("--code-block", choices=("first", "last"), default="first")
    add_sandbox_flags(run)
    run.set_defaults(func=_run)


def _import(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .problems import read_code_problems, write_code_problems

    if args.out is None and not args.check:
        raise ValueError("give --out (where to write the problems), --check (run their "
                         "reference solutions in the sandbox), or both")
    problems = read_code_problems(args.source)
    if args.timeout_s is not None:
        if not 0 < args.timeout_s <= 3600:
            raise ValueError(f"--timeout-s must be in (0, 3600] seconds, got {args.timeout_s}")
        problems = [replace(p, timeout_s=args.timeout_s) for p in problems]
    if args.check:
        missing = [p.id for p in problems if p.reference is None]
        if missing:  # before writing or running anything
            raise ValueError(
                f"--check: {len(missing)} of {len(problems)} problems in {args.source} have no "
                f"reference solution: {', '.join(missing[:10])}"
                f"{', ...' if len(missing) > 10 else ''}")
    if args.out is not None:
        write_code_problems(args.out, problems)
        entry = sum(p.entry_point is not None for p in problems)
        refs = sum(p.reference is not None for p in problems)
        print(f"wrote {args.out}: {len(problems)} coding problems ({entry} with an entry "
              f"point, {refs} with a reference solution)")
    return _check_references(problems, args) if args.check else 0


def _check_references(problems: list, args: argparse.Namespace) -> int:
    """Run every reference solution against its problem's tests; 0 only if all pass."""
    from .sandbox import Job, SandboxPool, check_sandbox

    start = time.monotonic()
    isolation = check_sandbox(args.allow_unisolated, args.sandbox_python)
    pool = SandboxPool(args.grader_workers, allow_unisolated=args.allow_unisolated,
                       python=args.sandbox_python)
    results = pool.run([Job(p.reference, p.tests, p.entry_point, p.timeout_s, p.setup or "")
                        for p in problems])
    for p, r in zip(problems, results):
        if not r.passed:
            reason = " ".join(r.reason.split())  # one line per failing problem
            print(f"{p.id}: {r.status}: {reason}")
    passed = sum(r.passed for r in results)
    print(f"{passed}/{len(problems)} reference solutions pass (isolation: {isolation}) "
          f"in {time.monotonic() - start:.1f} s")
    return 0 if passed == len(problems) else 1


def _run(args: argparse.Namespace) -> int:
    from adaras_vllm.responses import split_response

    from .problems import extract_code, read_code_problems
    from .sandbox import SandboxLimits, run_candidate

    problems = {p.id: p for p in read_code_problems(args.problems)}
    if args.id not in problems:
        raise ValueError(f"--id {args.id!r} is not in {args.problems} (ids: "
                         f"{', '.join(list(problems)[:5])}{', ...' if len(problems) > 5 else ''})")
    problem = problems[args.id]
    text = sys.stdin.read() if str(args.candidate) == "-" else args.candidate.read_text()
    code = extract_code(split_response(text)[1], args.code_block)
    result = run_candidate(code, problem.tests, problem.entry_point,
                           SandboxLimits().with_wall(problem.timeout_s),
                           setup=problem.setup or "", allow_unisolated=args.allow_unisolated,
                           python=args.sandbox_python)
    print(json.dumps({"id": problem.id, "status": result.status, "reason": result.reason,
                      "seconds": result.seconds, "isolation": result.isolation,
                      "output": result.output}, indent=1))
    return 0 if result.passed else 3
