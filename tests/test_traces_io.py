"""Problems/traces JSONL: the paper's real files, our format's round trip, and bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaras_vllm.pipeline.traces import (
    Problem,
    Trace,
    TraceFormatError,
    capture_text,
    read_problems,
    read_traces,
    split_response,
    write_traces,
)

PAPER_DATA = Path(__file__).resolve().parents[1].parent / "shared/reference/adaras-paper/data"
needs_paper = pytest.mark.skipif(
    not PAPER_DATA.is_dir(),
    reason=f"paper reference data not found at {PAPER_DATA} (shared/reference is absent)",
)


def _write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@needs_paper
def test_reads_paper_gsm8k_traces() -> None:
    traces = read_traces(PAPER_DATA / "gsm8k/gsm8k_results_Qwen3-32B_filtered.jsonl")
    assert len(traces) == 120
    assert sum(t.is_good for t in traces) == 60
    first = traces[0]
    assert (first.id, first.attempt, first.is_good) == ("27", 1, True)
    assert first.gold == "59" and first.answer == "59"
    assert first.question.startswith("Shawna's workout goal is 30 situps.")
    assert first.thinking.startswith("\nOkay, so Shawna")


@needs_paper
def test_reads_paper_mbpp_traces_without_answers() -> None:
    traces = read_traces(PAPER_DATA / "Mbpp/Mbpp_results_Qwen3-32B_filtered.jsonl")
    assert len(traces) == 120
    assert all(t.answer is None and t.gold is None for t in traces)
    assert len({t.id for t in traces}) == 15


@needs_paper
def test_reads_paper_gsm8k_problems() -> None:
    problems = read_problems(PAPER_DATA / "gsm8k/gsm8k_test.jsonl")
    assert len(problems) == 1319
    assert problems[0] == Problem(id="1", question=problems[0].question, answer="18")
    assert problems[0].question.startswith("Janet’s ducks lay 16 eggs per day.")


@needs_paper
def test_reads_paper_math500_problems() -> None:
    problems = read_problems(PAPER_DATA / "Math/Math500_test.jsonl")
    assert len(problems) == 500
    assert problems[0].answer == r"\left( 3, \frac{\pi}{2} \right)"


@needs_paper
def test_reads_paper_aime_answer_with_leading_zero() -> None:
    problems = read_problems(PAPER_DATA / "AIME/AIME_test.jsonl")
    assert "025" in {p.answer for p in problems}


def test_round_trip_our_format(tmp_path: Path) -> None:
    traces = [
        Trace("7", 1, "What is 2+2?", "\nadd them\n", "4", "4", True),
        Trace("7", 2, "What is 2+2?", "ünïcode ≠ ascii", None, "4", False),
    ]
    path = tmp_path / "sub" / "traces.jsonl"
    write_traces(path, traces)
    assert read_traces(path) == traces
    keys = list(json.loads(path.read_text().splitlines()[0]))
    assert keys == ["id", "attempt", "question", "thinking", "answer", "gold", "is_good"]
    assert [p.name for p in path.parent.iterdir()] == ["traces.jsonl"]  # no temp file left


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    good = [Trace("1", 1, "q", "t", "a", "a", True)]
    write_traces(path, good)
    with pytest.raises(TypeError, match=r"traces\[1\] must be a Trace"):
        write_traces(path, [good[0], {"id": "1"}])  # type: ignore[list-item]
    assert read_traces(path) == good
    assert [p.name for p in tmp_path.iterdir()] == ["traces.jsonl"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("True", True), ("False", False)],
)
def test_is_good_forms(tmp_path: Path, value: object, expected: bool) -> None:
    row = {"id": 1, "_id": 2, "question": "q", "thinking": "t", "is_good": value}
    [trace] = read_traces(_write_lines(tmp_path / "t.jsonl", [row]))
    assert trace.is_good is expected


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    row = {"id": 1, "question": "q", "answer": 5}
    lines = ["", json.dumps(row), "   ", json.dumps(row | {"id": 2})]
    path = _write_lines(tmp_path / "p.jsonl", lines)
    assert read_problems(path) == [Problem("1", "q", "5"), Problem("2", "q", "5")]


def test_problem_key_is_an_alias_for_question(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "p.jsonl", [{"id": "a", "problem": "q", "answer": "1"}])
    assert read_problems(path) == [Problem("a", "q", "1")]


def test_missing_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "p.jsonl", [{"id": 1, "question": "q", "answer": "1"},
                                               {"id": 2, "question": "q"}])
    with pytest.raises(TraceFormatError, match=r"p\.jsonl:2: missing key 'answer'"):
        read_problems(path)


def test_missing_attempt_mentions_paper_alias(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "t.jsonl", [{"id": 1, "question": "q", "thinking": "t",
                                                "is_good": True}])
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: missing key 'attempt' or '_id'"):
        read_traces(path)


def test_bad_json_names_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "t.jsonl", ["", "{not json"])
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:2: not valid JSON"):
        read_traces(path)


def test_non_object_line_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r":1: expected a JSON object, got list"):
        read_problems(_write_lines(tmp_path / "p.jsonl", ["[1, 2]"]))


def test_bad_is_good_value_is_named(tmp_path: Path) -> None:
    row = {"id": 1, "_id": 1, "question": "q", "thinking": "t", "is_good": "maybe"}
    with pytest.raises(TraceFormatError, match=r":1: 'is_good' must be a boolean.*'maybe'"):
        read_traces(_write_lines(tmp_path / "t.jsonl", [row]))


def test_duplicate_trace_is_rejected(tmp_path: Path) -> None:
    row = {"id": 1, "_id": 1, "question": "q", "thinking": "t", "is_good": 1}
    with pytest.raises(TraceFormatError, match=r":2: duplicate trace id '1' attempt 1 .*line 1"):
        read_traces(_write_lines(tmp_path / "t.jsonl", [row, row]))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_traces(tmp_path / "nope.jsonl")


def test_capture_text_is_the_paper_prompt() -> None:
    expected = "Question: What is 2+2?\nThinking process:\nadd\n"
    assert capture_text("What is 2+2?", "\nadd\n") == expected


def test_split_response_with_think_tags() -> None:
    text = "<think>\nadd them\n</think>\n\nThe answer is \\boxed{4}"
    assert split_response(text) == ("\nadd them\n", "\n\nThe answer is \\boxed{4}")


def test_split_response_without_open_tag() -> None:
    # Chat templates often put <think> in the prompt, so the response starts inside it.
    assert split_response("reasoning</think>answer") == ("reasoning", "answer")


def test_split_response_without_close_tag() -> None:
    text = "<think>\nstill thinking when the token budget ran out"
    assert split_response(text) == (text, text)


def test_split_response_splits_at_first_close_tag() -> None:
    assert split_response("a</think>b</think>c") == ("a", "b</think>c")
