"""Coding problems: the format, readers for HumanEval's and MBPP's layouts, code extraction.

Our format (JSONL, one problem per line), next to the math one (`id, question, answer`):

- ``id``: string or int;
- ``question``: the prompt the model sees (through ``--prompt-template`` and the chat
  template, as for math);
- ``tests``: Python source run after the candidate's code, in the same namespace: asserts,
  or a ``check(candidate)`` function as HumanEval's tests define;
- ``entry_point`` (optional): the function ``check`` is called with;
- ``timeout_s`` (optional): this problem's wall-time limit (default: the grader's);
- ``setup`` (optional): Python source run before the candidate, in the same namespace: the
  imports and helpers the question's code relies on (HumanEval's prompt);
- ``reference`` (optional): a known-good solution, the complete program a candidate would
  be (``adaras code import --check`` runs it against the tests).

`read_code_problems` also reads HumanEval's lines (``task_id, prompt, test, entry_point``;
``prompt + canonical_solution`` is the reference) and MBPP's (``task_id, text, test_list,
test_setup_code``; the sanitized variant's ``prompt, test_imports`` too; ``code`` is the
reference) directly, so their public files work as they are.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["CodeProblem", "extract_code", "mbpp_question", "read_code_problems",
           "write_code_problems"]


@dataclass(frozen=True)
class CodeProblem:
    """A coding question and the tests its answer must pass."""

    id: str
    question: str
    tests: str
    entry_point: str | None = None
    timeout_s: float | None = None
    setup: str | None = None
    reference: str | None = None  # a known-good solution: the complete candidate program


def mbpp_question(text: str, first_test: str | None) -> str:
    """MBPP's prompt as EvalPlus (and the AdaRAS paper's MBPP traces) pose it: the task and
    its first assert, as a docstring."""
    example = f"{first_test.strip()}\n" if first_test else ""
    return f'"""\n{text.strip()}\n{example}"""\n'


def _strings(line: Any, name: str) -> list[str]:
    value = line.obj.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise line.error(f"{name!r} must be a list of strings, got {value!r}")
    return value


def _one_problem(line: Any) -> CodeProblem:
    obj = line.obj
    pid = line.identifier(line.key("id", "task_id", expected="the problem id"))
    if "tests" in obj:  # ours
        question = line.text(line.key("question", expected="the prompt the model sees"))
        tests = line.text("tests")
        entry = line.optional_text("entry_point")
        timeout = obj.get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or not 0 < timeout <= 3600):
            raise line.error(f"'timeout_s' must be a number of seconds in (0, 3600], "
                             f"got {timeout!r}")
        return CodeProblem(pid, question, tests, entry or None,
                           None if timeout is None else float(timeout),
                           line.optional_text("setup") or None,
                           line.optional_text("reference") or None)
    if "test_list" in obj:  # MBPP (original or sanitized)
        asserts = _strings(line, "test_list")
        text = line.text(line.key("text", "prompt", expected="the task description"))
        setup = obj.get("test_setup_code") or "\n".join(_strings(line, "test_imports"))
        if not isinstance(setup, str):
            raise line.error(f"'test_setup_code' must be a string, got {setup!r}")
        tests = "\n".join([setup, *asserts]).strip() + "\n"
        return CodeProblem(pid, mbpp_question(text, asserts[0] if asserts else None), tests,
                           reference=line.optional_text("code") or None)
    if "test" in obj and "prompt" in obj:  # HumanEval
        entry = line.text(line.key("entry_point", expected="the function the tests check"))
        prompt = line.text("prompt")
        # The prompt runs first: its imports and helper functions are part of the problem
        # (the candidate's own definition of the entry point replaces the stub).
        solution = line.optional_text("canonical_solution")
        return CodeProblem(pid, prompt, line.text("test"), entry, setup=prompt,
                           reference=None if solution is None else prompt + solution)
    raise line.error("not a coding problem: expected 'tests' (ours), 'test_list' (MBPP) or "
                     f"'prompt'+'test'+'entry_point' (HumanEval); keys present: {sorted(obj)}")


def read_code_problems(path: str | os.PathLike[str]) -> list[CodeProblem]:
    """Coding problems from JSONL (or .jsonl.gz) in our layout, HumanEval's or MBPP's."""
    from adaras_vllm.jsonl import JsonLine, json_lines

    path = Path(path)
    problems: list[CodeProblem] = []
    seen: dict[str, int] = {}
    for lineno, obj in json_lines(path):
        line = JsonLine(path, lineno, obj)
        problem = _one_problem(line)
        if problem.id in seen:
            raise line.error(f"duplicate id {problem.id!r} (first on line {seen[problem.id]})")
        seen[problem.id] = lineno
        problems.append(problem)
    return problems


def write_code_problems(path: str | os.PathLike[str], problems: list[CodeProblem]) -> None:
    """Write problems in our layout (optional keys only when set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for p in problems:
            row = {k: v for k, v in asdict(p).items() if v is not None}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


# A fence line: ``` plus an optional language tag; the block ends at the next ``` (or at
# the end of a truncated answer).
_ANY_BLOCK = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:```|\Z)",
                           re.DOTALL | re.IGNORECASE)
CODE_BLOCKS = ("first", "last")


def extract_code(answer: str, block: str = "first") -> str:
    """The code of a response's answer part (the text after the thinking).

    ``first`` (default): the first fenced block, whatever its language tag, as the AdaRAS
    paper's ``extract_code`` does (it gives their MBPP traces' ``extract_code`` for 120 of
    120): chat models write the solution first and usage examples after it. ``last``: the
    last block tagged ``python`` (``py``, ``python3``), for models that end on their final
    version. A block left open by a truncated answer runs to the end; with no block at
    all, the whole answer is the code.
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    if block == "first":
        found = _ANY_BLOCK.search(answer)
        return found.group(1) if found else answer.strip()
    if block == "last":
        blocks = _PYTHON_BLOCK.findall(answer)
        return blocks[-1] if blocks else answer.strip()
    raise ValueError(f"block must be one of {', '.join(CODE_BLOCKS)}, got {block!r}")
