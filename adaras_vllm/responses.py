"""A model response's two parts: its thinking (up to ``</think>``) and its answer."""

from __future__ import annotations

__all__ = ["THINK_CLOSE", "THINK_OPEN", "split_response", "wrote_thinking"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


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
