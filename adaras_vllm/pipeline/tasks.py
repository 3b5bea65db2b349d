"""The two kinds of problems the pipeline grades: math (a gold answer) and code (tests).

Every command that grades (traces generate, maps build, gate train, eval) reads problems
and grades responses through this module, so `--task math|code` means the same thing
everywhere and a problems file's kind is detected the same way when it is not given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from adaras_vllm.jsonl import TraceFormatError, json_lines
from adaras_vllm.responses import split_response

from .traces import Trace, read_problems

__all__ = ["TASKS", "check_grader", "detect_task", "grade_responses", "isolation_mode",
           "read_task_problems", "verdict_counts"]

TASKS = ("math", "code")


def _is_code(obj: dict) -> bool:
    # ours ("tests"), MBPP ("test_list"), HumanEval ("test" with "prompt")
    return "tests" in obj or "test_list" in obj or ("test" in obj and "prompt" in obj)


def detect_task(path: str | os.PathLike[str]) -> str:
    """'code' when the first problem has tests (ours, MBPP's or HumanEval's), else 'math'."""
    for _, obj in json_lines(path):
        return "code" if _is_code(obj) else "math"
    raise TraceFormatError(f"{path}: no problems in the file")


def read_task_problems(path: str | os.PathLike[str], task: str | None = None, *,
                       number_repeats: bool = False) -> tuple[str, list[Any]]:
    """(task, problems) of a problems file; `task` None detects it from the file, and a
    given `task` that the file's first problem contradicts is refused, naming both.
    `number_repeats`: math files may repeat an id (see `read_problems`)."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    detected = detect_task(path)
    if task is not None and task != detected:
        raise ValueError(
            f"--task {task} but {path} holds {detected} problems (its first line has "
            f"{'tests' if detected == 'code' else 'no tests'}); drop --task to detect it")
    if detected == "math":
        return detected, read_problems(path, number_repeats=number_repeats)
    from adaras_vllm.coding.problems import read_code_problems

    return detected, read_code_problems(path)


def check_grader(task: str, allow_unisolated: bool = False,
                 sandbox_python: str | None = None) -> str | None:
    """Before any engine starts: for code, run an empty candidate through the sandbox, so
    a machine that cannot sandbox fails now and not after hours of sampling. Returns the
    sandbox's isolation; raises `SandboxUnavailable` (an OSError saying why and the ways
    out) when it cannot isolate candidates and `allow_unisolated` is False."""
    if task != "code":
        return None
    from adaras_vllm.coding.sandbox import check_sandbox

    return check_sandbox(allow_unisolated, sandbox_python)


def isolation_mode(isolation: str | None) -> str | None:
    """'namespaces' or 'limits-only' from the sandbox's isolation description (None: no
    sandbox was used)."""
    if not isolation:
        return None
    return "namespaces" if isolation.startswith("namespaces") else "limits-only"


def grade_responses(
    task: str, items: Sequence[tuple[Any, int, str]], *, answer_pattern: str | None = None,
    workers: int | None = None, progress: bool = True, code_block: str = "first",
    allow_unisolated: bool = False, sandbox_python: str | None = None,
) -> list[Trace]:
    """(problem, attempt, response text) -> graded traces, in order.

    Math: the final answer (last ``\\boxed{}`` or `answer_pattern`) against the gold answer
    with math-verify. Code: the answer's code (`extract_code`, its `code_block` rule) run
    against the problem's tests in the sandbox, `workers` at a time, on `sandbox_python`
    (None: the base installation), with process limits only where namespaces cannot be had
    if `allow_unisolated`; the trace's `verdict` says how it ended.
    """
    if task == "math":
        from .generate import label_response

        return [label_response(p, attempt, text, answer_pattern) for p, attempt, text in items]
    if task != "code":
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    from adaras_vllm.coding.problems import CodeProblem, extract_code
    from adaras_vllm.coding.sandbox import Job, SandboxPool

    jobs = []
    parts = []
    for problem, _, text in items:
        if not isinstance(problem, CodeProblem):
            raise TypeError(f"task 'code' grades CodeProblem items, got {type(problem).__name__}"
                            " (is --task right for this problems file?)")
        thinking, answer = split_response(text)
        code = extract_code(answer, code_block)
        parts.append((thinking, code))
        jobs.append(Job(code, problem.tests, problem.entry_point, problem.timeout_s,
                        problem.setup or ""))
    pool = SandboxPool(workers, allow_unisolated=allow_unisolated, python=sandbox_python)
    results = _run_with_progress(pool, jobs, progress)
    return [
        Trace(id=p.id, attempt=attempt, question=p.question, thinking=thinking, answer=code,
              gold=None, is_good=r.passed, verdict=f"{r.status}: {r.reason}")
        for (p, attempt, _), (thinking, code), r in zip(items, parts, results)
    ]


def _run_with_progress(pool: Any, jobs: list, progress: bool) -> list:
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="running tests in the sandbox", unit="candidate",
              disable=not progress or not jobs) as bar:
        update: Callable[[], None] = lambda: bar.update(1)  # noqa: E731
        return pool.run(jobs, update)


def verdict_counts(traces: Sequence[Trace]) -> dict[str, int]:
    """How many traces ended pass / fail / timeout / error (code traces only)."""
    counts: dict[str, int] = {}
    for t in traces:
        if t.verdict:
            status = t.verdict.split(":", 1)[0]
            counts[status] = counts.get(status, 0) + 1
    return counts
