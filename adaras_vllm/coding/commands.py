"""`adaras code import` and `adaras code run`: coding problems from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_code_commands(subparsers: argparse._SubParsersAction) -> None:
    code = subparsers.add_parser("code", help="coding problems: import, run a candidate")
    commands = code.add_subparsers(dest="code_command", metavar="CODE_COMMAND", required=True)
    imp = commands.add_parser(
        "import", help="convert HumanEval's or MBPP's JSONL (.jsonl.gz too) to our format",
        description="Read HumanEval (task_id, prompt, test, entry_point) or MBPP (task_id, "
        "text, test_list, test_setup_code; sanitized: prompt, test_imports) lines and write "
        "our coding problems format (id, question, tests, entry_point, timeout_s). Every "
        "grading command also reads those files as they are; importing lets you edit them.")
    imp.add_argument("source", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--timeout-s", type=float, metavar="S",
                     help="set this wall-time limit on every problem")
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
    run.set_defaults(func=_run)


def _import(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .problems import read_code_problems, write_code_problems

    problems = read_code_problems(args.source)
    if args.timeout_s is not None:
        if not 0 < args.timeout_s <= 3600:
            raise ValueError(f"--timeout-s must be in (0, 3600] seconds, got {args.timeout_s}")
        problems = [replace(p, timeout_s=args.timeout_s) for p in problems]
    write_code_problems(args.out, problems)
    entry = sum(p.entry_point is not None for p in problems)
    print(f"wrote {args.out}: {len(problems)} coding problems ({entry} with an entry point)")
    return 0


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
                           setup=problem.setup or "")
    print(json.dumps({"id": problem.id, "status": result.status, "reason": result.reason,
                      "seconds": result.seconds, "isolation": result.isolation,
                      "output": result.output}, indent=1))
    return 0 if result.passed else 3
