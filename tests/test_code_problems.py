"""Coding problems: our format, HumanEval's and MBPP's layouts, code extraction, task
detection, and grading responses through the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adaras_vllm.coding.problems import (
    CodeProblem,
    extract_code,
    read_code_problems,
    write_code_problems,
)
from adaras_vllm.pipeline.tasks import detect_task, grade_responses, read_task_problems
from adaras_vllm.pipeline.traces import TraceFormatError, read_traces, write_traces

PAPER_MBPP = (Path(__file__).resolve().parents[2] / "shared" / "reference" / "adaras-paper"
              / "data" / "Mbpp" / "Mbpp_results_Qwen3-32B_filtered.jsonl")

HUMANEVAL_LINE = {
    "task_id": "HumanEval/0", "prompt": "def square(x):\n    \"\"\"x squared\"\"\"\n",
    "canonical_solution": "    return x * x\n",
    "test": "def check(candidate):\n    assert candidate(3) == 9\n", "entry_point": "square",
}
MBPP_LINE = {
    "task_id": 11, "text": "Write a function to add two numbers.", "code": "...",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
    "test_setup_code": "import math", "challenge_test_list": [],
}
MBPP_SANITIZED_LINE = {
    "task_id": 12, "prompt": "Write a function to add two numbers.", "code": "...",
    "test_imports": ["import math"], "test_list": ["assert add(1, 2) == 3"],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_our_format_round_trips_with_optional_keys(tmp_path: Path) -> None:
    problems = [CodeProblem("a", "Write f.", "assert f() == 1\n"),
                CodeProblem("b", "Write g.", "def check(c):\n    pass\n", "g", 2.5,
                            "import math\n")]
    write_code_problems(tmp_path / "p.jsonl", problems)
    assert read_code_problems(tmp_path / "p.jsonl") == problems
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "question", "tests"}


def test_humaneval_lines_are_read_as_they_are(tmp_path: Path) -> None:
    [p] = read_code_problems(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE]))
    assert p == CodeProblem("HumanEval/0", HUMANEVAL_LINE["prompt"], HUMANEVAL_LINE["test"],
                            "square", setup=HUMANEVAL_LINE["prompt"],
                            reference=HUMANEVAL_LINE["prompt"]
                            + HUMANEVAL_LINE["canonical_solution"])


def test_mbpp_lines_become_the_paper_question_and_setup_plus_asserts(tmp_path: Path) -> None:
    [p] = read_code_problems(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_LINE]))
    assert p.id == "11"
    assert p.question == ('"""\nWrite a function to add two numbers.\n'
                          'assert add(1, 2) == 3\n"""\n')
    assert p.tests == "import math\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n"
    assert p.entry_point is None


def test_sanitized_mbpp_lines_are_read_too(tmp_path: Path) -> None:
    [p] = read_code_problems(write_jsonl(tmp_path / "s.jsonl", [MBPP_SANITIZED_LINE]))
    assert p.tests == "import math\nassert add(1, 2) == 3\n"


def test_the_mbpp_question_is_posed_as_in_the_papers_traces() -> None:
    if not PAPER_MBPP.is_file():
        pytest.skip(f"{PAPER_MBPP} is not on this machine")
    from adaras_vllm.coding.problems import mbpp_question

    for line in PAPER_MBPP.read_text().splitlines():
        question = json.loads(line)["question"]
        inner = question.removeprefix('"""\n').removesuffix('"""\n')
        text, first_assert = inner.rstrip("\n").rsplit("\n", 1)
        assert mbpp_question(text, first_assert) == question


def test_a_line_that_is_no_coding_problem_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "question": "q", "answer": "4"}])
    with pytest.raises(TraceFormatError, match=r"bad.jsonl:1: not a coding problem.*'answer'"):
        read_code_problems(path)


def test_a_bad_timeout_is_refused_with_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": 1, "question": "q", "tests": "",
                                               "timeout_s": "soon"}])
    with pytest.raises(TraceFormatError, match=r"t.jsonl:1: 'timeout_s' must be a number"):
        read_code_problems(path)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    row = {"id": 1, "question": "q", "tests": "assert True"}
    with pytest.raises(TraceFormatError, match="duplicate id '1'"):
        read_code_problems(write_jsonl(tmp_path / "d.jsonl", [row, row]))


def test_the_task_is_detected_from_the_first_problem(tmp_path: Path) -> None:
    math = write_jsonl(tmp_path / "math.jsonl", [{"id": 1, "question": "1+1", "answer": "2"}])
    assert detect_task(math) == "math"
    for name, row in (("ours", {"id": 1, "question": "q", "tests": "assert True"}),
                      ("he", HUMANEVAL_LINE), ("mbpp", MBPP_LINE)):
        assert detect_task(write_jsonl(tmp_path / f"{name}.jsonl", [row])) == "code"
    task, problems = read_task_problems(math)
    assert task == "math" and problems[0].answer == "2"


def test_a_task_the_file_contradicts_is_refused_naming_both(tmp_path: Path) -> None:
    code = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    with pytest.raises(ValueError, match=r"--task math but .*he.jsonl holds code problems"):
        read_task_problems(code, "math")
    math = write_jsonl(tmp_path / "m.jsonl", [{"id": 1, "question": "q", "answer": "2"}])
    with pytest.raises(ValueError, match=r"--task code but .*m.jsonl holds math problems"):
        read_task_problems(math, "code")


def test_an_empty_problems_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceFormatError, match="no problems in the file"):
        read_task_problems(tmp_path / "empty.jsonl", "code")


def test_gzipped_problem_files_are_read(tmp_path: Path) -> None:
    import gzip

    for name, row in (("he", HUMANEVAL_LINE), ("m", {"id": 1, "question": "q", "answer": "2"})):
        with gzip.open(tmp_path / f"{name}.jsonl.gz", "wt") as handle:
            handle.write(json.dumps(row) + "\n")
    assert read_task_problems(tmp_path / "he.jsonl.gz")[0] == "code"
    assert read_task_problems(tmp_path / "m.jsonl.gz")[1][0].answer == "2"


def test_an_unknown_task_is_refused_naming_the_choices(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": 1, "question": "q", "answer": "2"}])
    with pytest.raises(ValueError, match="task must be one of math, code, got 'chess'"):
        read_task_problems(path, "chess")


ANSWER = ("Here is the solution:\n```python\ndef f():\n    return 1\n```\n"
          "Usage:\n```\nprint(f())\n```\nAnd again:\n```python\nprint(f() + 1)\n```\n")


def test_the_code_is_the_first_fenced_block_by_default_as_the_paper_extracts() -> None:
    assert extract_code(ANSWER) == "def f():\n    return 1\n"


def test_the_last_python_block_can_be_chosen() -> None:
    assert extract_code(ANSWER, "last") == "print(f() + 1)\n"


def test_an_answer_without_a_block_is_all_code() -> None:
    assert extract_code("  def f():\n    return 1\n") == "def f():\n    return 1"


def test_a_block_cut_off_by_the_token_limit_runs_to_the_end() -> None:
    assert extract_code("text\n```python\ndef f():\n    ret") == "def f():\n    ret"


def test_extraction_matches_the_papers_extract_code_on_its_mbpp_traces() -> None:
    if not PAPER_MBPP.is_file():
        pytest.skip(f"{PAPER_MBPP} is not on this machine")
    rows = [json.loads(line) for line in PAPER_MBPP.read_text().splitlines()]
    same = sum(extract_code(r["answer_content"]).strip() == r["extract_code"].strip()
               for r in rows)
    assert same == len(rows) == 120


def test_code_responses_are_graded_after_the_thinking_with_verdicts() -> None:
    problem = CodeProblem("p", "Write f.", "assert f() == 1\n")
    items = [
        (problem, 0, "<think>\n```python\ndef f():\n    return 2\n```\n</think>\n"
                     "```python\ndef f():\n    return 1\n```"),
        (problem, 1, "<think>\nhmm</think>\n```python\ndef f():\n    return 2\n```"),
        (problem, 2, "<think>\nhmm</think>\n```python\nwhile True:\n    pass\n```"),
    ]
    traces = grade_responses("code", items, progress=False)
    assert [t.is_good for t in traces] == [True, False, False]
    assert traces[0].verdict == "pass: all tests passed"
    assert traces[1].verdict.startswith("fail: AssertionError")
    assert traces[0].thinking.startswith("\n```python")
    assert traces[0].answer == "def f():\n    return 1\n"
    assert traces[0].gold is None


def test_per_problem_timeouts_apply() -> None:
    slow = CodeProblem("s", "q", "assert True\n", timeout_s=1)
    [t] = grade_responses("code", [(slow, 0, "import time\ntime.sleep(30)")], progress=False)
    assert t.verdict == "timeout: wall-time limit of 1 s exceeded"


def test_code_traces_keep_their_verdict_and_math_traces_their_seven_keys(
        tmp_path: Path) -> None:
    problem = CodeProblem("p", "Write f.", "assert f() == 1\n")
    traces = grade_responses("code", [(problem, 0, "def f():\n    return 1\n")],
                             progress=False)
    write_traces(tmp_path / "code.jsonl", traces)
    assert read_traces(tmp_path / "code.jsonl") == traces
    from adaras_vllm.pipeline.traces import Trace

    write_traces(tmp_path / "math.jsonl", [Trace("1", 0, "q", "t", "2", "2", True)])
    assert "verdict" not in json.loads((tmp_path / "math.jsonl").read_text())


def test_grading_math_items_as_code_is_refused_with_a_hint() -> None:
    from adaras_vllm.pipeline.traces import Problem

    with pytest.raises(TypeError, match="is --task right"):
        grade_responses("code", [(Problem("1", "q", "2"), 0, "2")], progress=False)


def _adaras(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adaras_vllm", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_code_import_writes_our_format_from_humaneval(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    out = _adaras("code", "import", str(src), "--out", str(tmp_path / "ours.jsonl"),
                  "--timeout-s", "5")
    assert out.returncode == 0, out.stderr
    [p] = read_code_problems(tmp_path / "ours.jsonl")
    assert (p.entry_point, p.timeout_s) == ("square", 5.0)


def test_code_run_grades_a_response_and_exits_zero_only_on_pass(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    good = "<think>x</think>\n```python\ndef square(x):\n    return x * x\n```\n"
    ok = _adaras("code", "run", "--problems", str(src), "--id", "HumanEval/0", "-",
                 stdin=good)
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "pass"
    bad = _adaras("code", "run", "--problems", str(src), "--id", "HumanEval/0", "-",
                  stdin="def square(x):\n    return x + x\n")
    assert bad.returncode == 3 and json.loads(bad.stdout)["status"] == "fail"


def test_code_run_names_an_unknown_problem_id(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_LINE])
    out = _adaras("code", "run", "--problems", str(src), "--id", "nope", "-", stdin="x")
    assert out.returncode == 1 and "--id 'nope' is not in" in out.stderr


def test_eval_grades_code_answers_from_either_path_with_verdicts() -> None:
    from adaras_vllm.evaluate.runner import AskSettings, Setting, _Answer, grade_answers
    from adaras_vllm.evaluate.summary import format_table, summarize

    problem = CodeProblem("p", "Write f.", "assert f() == 1\n")
    answers = [
        _Answer(problem, Setting(None, 0.0, "off"), "```python\ndef f():\n    return 2\n```",
                7, None),
        _Answer(problem, Setting("m", 0.3, "always"), "```python\ndef f():\n    return 1\n```",
                9, None),
    ]
    graded = grade_answers(answers, AskSettings(task="code"), progress=False)
    assert [g.correct for g in graded] == [False, True]
    assert graded[0].verdict.startswith("fail: AssertionError")
    summaries = summarize(graded)
    assert [s.verdicts for s in summaries] == [{"fail": 1}, {"pass": 1}]
    assert summaries[1].wrong_to_right == 1
    table = format_table(summaries, metric="pass@1")
    assert "pass@1" in table and "verdicts" in table
