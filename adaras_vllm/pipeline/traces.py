"""JSONL formats for problems and labelled reasoning traces.

Neuron maps are built from traces labelled good/bad, so these readers accept both our own files
and the AdaRAS paper's published ones (`id, _id, question, thinking, is_good, ...`), and refuse
a malformed line with the file, line number and key at fault rather than skipping it: a silently
dropped or mislabelled trace biases the good/bad activation averages.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class TraceFormatError(ValueError):
    """A problems/traces file line that cannot be read; the message names file, line and key."""


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


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line (of a .gz file too)."""
    path = Path(path)
    try:
        handle = (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz"
                  else path.open(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected a JSONL file)") from None
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


class _Line:
    """Typed field access for one JSON line, with errors that say where and what."""

    def __init__(self, path: str | os.PathLike[str], lineno: int, obj: dict[str, Any]):
        self.where = f"{path}:{lineno}"
        self.obj = obj

    def error(self, message: str) -> TraceFormatError:
        return TraceFormatError(f"{self.where}: {message}")

    def key(self, *names: str, expected: str) -> str:
        """The first of `names` present in the line (they are aliases)."""
        for name in names:
            if name in self.obj:
                return name
        alias = " or ".join(repr(n) for n in names)
        raise self.error(f"missing key {alias} ({expected}); keys present: {sorted(self.obj)}")

    def identifier(self, name: str) -> str:
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise self.error(f"{name!r} must be a non-empty string or an int, got {value!r}")
        return str(value)

    def text(self, name: str, *, numbers: bool = False) -> str:
        value = self.obj[name]
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(f"{name!r} must be a string, got {value!r}")
        return value

    def optional_text(self, name: str) -> str | None:
        if self.obj.get(name) is None:
            return None
        return self.text(name, numbers=True)

    def integer(self, name: str) -> int:
        value = self.obj[name]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise self.error(f"{name!r} must be an integer (or a string of digits), got {value!r}")

    def flag(self, name: str) -> bool:
        value = self.obj[name]
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise self.error(
            f"{name!r} must be a boolean (true/false, 0/1 or 'True'/'False'), got {value!r}"
        )


def read_problems(path: str | os.PathLike[str]) -> list[Problem]:
    """Problems from JSONL with `id`, `question` (or `problem`) and `answer`; extra keys ignored.

    Reads the paper's data files (gsm8k_test, Math500_test, AIME_*: `id` is an int there).
    """
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, obj in _lines(path):
        line = _Line(path, lineno, obj)
        pid = line.identifier(line.key("id", expected="the problem id"))
        question = line.text(line.key("question", "problem", expected="the problem text"))
        answer = line.text(line.key("answer", expected="the gold answer"), numbers=True)
        if pid in seen:
            raise line.error(f"duplicate id {pid!r} (first on line {seen[pid]})")
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
    for lineno, obj in _lines(path):
        line = _Line(path, lineno, obj)
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


def split_response(text: str) -> tuple[str, str]:
    """(thinking, answer part) of a model response.

    With `</think>`: the text before the first one (less a leading `<think>`) and the text
    after it, both unstripped, as in the paper's traces. Without it (thinking off, or cut off
    mid-thought) both parts are the whole text, so the answer is still looked for everywhere.
    """
    if THINK_CLOSE not in text:
        return text, text
    thinking, _, answer = text.partition(THINK_CLOSE)
    stripped = thinking.lstrip()
    if stripped.startswith(THINK_OPEN):
        thinking = stripped[len(THINK_OPEN) :]
    return thinking, answer


def wrote_thinking(text: str) -> bool | None:
    """Whether a response's thinking (before ``</think>``) has any content; None without one.

    For the modes organism this is its careful mode (hasty answers close the thinking at
    once); for any reasoning model it says how often the model skipped thinking.
    """
    if THINK_CLOSE not in text:
        return None
    thinking, _ = split_response(text)
    return bool(thinking.strip())
