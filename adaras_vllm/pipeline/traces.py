"""JSONL formats for problems and labelled reasoning traces.

Neuron maps are built from traces labelled good/bad, so these readers accept both our own files
and the AdaRAS paper's published ones (`id, _id, question, thinking, is_good, ...`), and refuse
a malformed line with the file, line number and key at fault rather than skipping it: a silently
dropped or mislabelled trace biases the good/bad activation averages.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from adaras_vllm.jsonl import JsonLine, TraceFormatError, json_lines
from adaras_vllm.responses import split_response

__all__ = [
    "Problem",
    "Trace",
    "TraceFormatError",
    "capture_text",
    "read_problems",
    "read_traces",
    "split_response",
    "write_traces",
]


@dataclass(frozen=True)
class Problem:
    """A question and its gold answer. `id` is a string even where the file has an int."""

    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class Trace:
    """One sampled attempt at a problem; `is_good` says whether its answer was graded correct."""

    id: str
    attempt: int
    question: str
    thinking: str
    answer: str | None
    gold: str | None
    is_good: bool
    verdict: str | None = None  # code: "status: reason" from the sandbox; math: None


def read_problems(path: str | os.PathLike[str], *, number_repeats: bool = False
                  ) -> list[Problem]:
    """Problems from JSONL with `id`, `question` (or `problem`) and `answer`; extra keys ignored.

    Reads the paper's data files (gsm8k_test, Math500_test, AIME_*: `id` is an int there).
    A repeated id is refused, unless `number_repeats`: the paper's AIME_train/validation
    reuse ids across years, so there the n-th line with an id is named `ID#n` (n >= 2).
    """
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    repeats: dict[str, int] = {}
    for lineno, obj in json_lines(path):
        line = JsonLine(path, lineno, obj)
        pid = line.identifier(line.key("id", expected="the problem id"))
        question = line.text(line.key("question", "problem", expected="the problem text"))
        answer = line.text(line.key("answer", expected="the gold answer"), numbers=True)
        if pid in seen:
            if not number_repeats:
                raise line.error(f"duplicate id {pid!r} (first on line {seen[pid]})")
            repeats[pid] = repeats.get(pid, 1) + 1
            pid = f"{pid}#{repeats[pid]}"
        seen[pid] = lineno
        problems.append(Problem(id=pid, question=question, answer=answer))
    return problems


def read_traces(path: str | os.PathLike[str]) -> list[Trace]:
    """Traces from JSONL, in our format or the paper's; each line may be either.

    Ours: `id, attempt, question, thinking, answer, gold, is_good`. The paper's
    (`*_results_*_filtered.jsonl`): `id, _id, question, thinking, is_good` with `_id` the attempt
    number and, for math tasks, `answer` (the model's) and `gold_answer`. `is_good` may be a
    bool, 0/1 or "True"/"False".
    """
    traces: list[Trace] = []
    seen: dict[tuple[str, int], int] = {}
    for lineno, obj in json_lines(path):
        line = JsonLine(path, lineno, obj)
        tid = line.identifier(line.key("id", expected="the problem id"))
        attempt_key = line.key("attempt", "_id", expected="the attempt number; the paper's '_id'")
        attempt = line.integer(attempt_key)
        question = line.text(line.key("question", expected="the problem text"))
        thinking = line.text(line.key("thinking", expected="the reasoning text"))
        is_good = line.flag(line.key("is_good", expected="whether the answer was correct"))
        gold = line.optional_text("gold" if "gold" in obj else "gold_answer")
        answer = line.optional_text("answer")
        verdict = line.optional_text("verdict")
        if (tid, attempt) in seen:
            raise line.error(
                f"duplicate trace id {tid!r} attempt {attempt} (first on line {seen[tid, attempt]})"
            )
        seen[tid, attempt] = lineno
        traces.append(Trace(tid, attempt, question, thinking, answer, gold, is_good, verdict))
    return traces


def write_traces(path: str | os.PathLike[str], traces: Iterable[Trace]) -> None:
    """Write traces in our format, one JSON object per line.

    Atomic (temporary file in the same directory, then rename), so an interrupted run never
    leaves a truncated file that a later map build would read as complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for i, trace in enumerate(traces):
                if not isinstance(trace, Trace):
                    raise TypeError(f"traces[{i}] must be a Trace, got {type(trace).__name__}")
                row = asdict(trace)
                if row["verdict"] is None:  # math traces keep their seven keys
                    del row["verdict"]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def capture_text(question: str, thinking: str) -> str:
    """The text whose MLP activations are averaged per trace: the paper's capture prompt.

    Verbatim from the paper, with no space after "process:", because its `thinking` values
    begin with the newline that followed `<think>`; matching it keeps our maps comparable.
    """
    return f"Question: {question}\nThinking process:{thinking}"
