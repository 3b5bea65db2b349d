"""Grading model answers against gold answers.

Equivalence is decided by the maintained `math_verify` library (HuggingFace), never by
hand-written rules: "0.5" vs "\\frac{1}{2}", "1,000" vs "1000", units and percentages are the
library's call. This module only finds the answer in a response and wraps answer strings so the
library parses them as the single expression they are.
"""

from __future__ import annotations

import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

__all__ = ["extract_final_answer", "grade", "grade_response", "gold_answer"]

_BOXED = "\\boxed"
# math_verify's own default; it is enforced with SIGALRM, which only the main thread may use.
_TIMEOUT_S = 5
# Answers are wrapped in \boxed{...}, so boxed matching goes first; plain expressions are a
# fallback for strings the LaTeX parser rejects.
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_GSM8K_MARK = "####"


def extract_final_answer(text: str, pattern: str | None = None) -> str | None:
    r"""The final answer in a model response, or None when there is none.

    Without `pattern`: the content of the last complete `\boxed{...}` (nested and escaped braces
    handled, so `\boxed{\frac{1}{2}}` gives `\frac{1}{2}`), or of `\boxed 5`. A box that is
    empty or never closed (a truncated generation) is skipped, and the one before it is used.
    With `pattern` (a regex with one capture group): group 1 of its last match.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (a model response), got {type(text).__name__}")
    if pattern is not None:
        return _extract_with_pattern(text, pattern)
    end = len(text)
    while (start := text.rfind(_BOXED, 0, end)) >= 0:
        content = _box_content(text, start + len(_BOXED))
        if content:
            return content
        end = start
    return None


def _extract_with_pattern(text: str, pattern: str) -> str | None:
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"answer pattern {pattern!r} is not a valid regex: {e}") from e
    if regex.groups < 1:
        raise ValueError(
            f"answer pattern {pattern!r} has no capture group; put one group around the "
            r"answer, e.g. r'A:\s*(\S+)'"
        )
    last = None
    for last in regex.finditer(text):
        pass
    if last is None or last.group(1) is None:
        return None
    return _strip_sentence_end(last.group(1)) or None


def _box_content(text: str, i: int) -> str | None:
    """What `\\boxed` at text[i - 6:i] boxes: `{...}` balanced, or one bare token."""
    j = i
    while j < len(text) and text[j].isspace():
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        k = j
        while k < len(text):
            ch = text[k]
            if ch == "\\":  # \{ and \} are literal braces, not grouping
                k += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k].strip()
            k += 1
        return None  # never closed
    if j == i and j < len(text) and text[j].isalpha():
        return None  # `\boxedfoo` is another command, not a box
    token = re.match(r"[^\s${}]+", text[j:])
    return _strip_sentence_end(token.group(0)) if token else None


def _strip_sentence_end(answer: str) -> str:
    # "A: 72." - the period ends the sentence; math_verify rejects "72." as a number.
    return answer.strip().rstrip(".").strip()


def gold_answer(gold: str) -> str:
    """The gold answer proper: what follows the last '####' in a GSM8K solution, else all of it."""
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a str (e.g. '72' or '\\frac{{1}}{{2}}'), got {gold!r}")
    answer = gold.rsplit(_GSM8K_MARK, 1)[-1].strip()
    if not answer:
        raise ValueError(f"gold answer {gold!r} is empty; expected e.g. '72', '#### 72'")
    return answer


def _parsing_timeout() -> int | None:
    # math_verify times out with signal.alarm(), which raises ValueError off the main thread;
    # there we run without its timeout (the caller owns any deadline).
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(answer: str, timeout: int | None) -> list:
    # Wrapping in \boxed{} makes the library read the whole string as one answer, rather than
    # hunting for "the last number" in it.
    return parse(
        f"{_BOXED}{{{answer}}}",
        extraction_config=_EXTRACTION,
        parsing_timeout=timeout,  # type: ignore[arg-type]  # None disables it (see source)
    )


def grade(predicted: str | None, gold: str) -> bool:
    """Whether `predicted` equals `gold`, as math_verify judges it; None (no answer) is wrong.

    `gold` may be a number ("72", "1,000"), LaTeX ("\\frac{1}{2}") or a GSM8K solution ending in
    "#### 72". Safe to call from any thread.
    """
    expected = gold_answer(gold)
    if predicted is None:
        return False
    if not isinstance(predicted, str):
        raise TypeError(f"predicted must be a str or None, got {type(predicted).__name__}")
    if not predicted.strip():
        return False
    timeout = _parsing_timeout()
    gold_parsed = _parse(expected, timeout)
    pred_parsed = _parse(predicted.strip(), timeout)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def grade_response(text: str, gold: str, pattern: str | None = None) -> tuple[str | None, bool]:
    """(extracted answer, correct?) for a whole model response; see `extract_final_answer`."""
    answer = extract_final_answer(text, pattern)
    return answer, grade(answer, gold)
