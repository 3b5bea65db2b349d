"""The maps package's error types, and how their messages show values taken from a file.

Both errors are ValueErrors, so callers that only know "bad input" still catch them. Values
read from a file may be megabytes long, hence the helpers that cut them short.
"""

from __future__ import annotations

from typing import Any

#: Error messages quote at most this many characters of a value taken from a file.
QUOTE_LIMIT = 80


class MapFormatError(ValueError):
    """A map (file or in-memory) breaks the neuron-map format rules."""


class MapMismatchError(ValueError):
    """A map, or a source it is built from, does not fit a model's shape."""


def quoted(value: Any) -> str:
    """repr(value), cut short: values read from a file may be megabytes long."""
    text = repr(value)
    if len(text) <= QUOTE_LIMIT:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:QUOTE_LIMIT]}...{size}"


def clipped(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def some(values: list[Any], limit: int = 8) -> str:
    """A list for a message: the first few values, and how many there are in all."""
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ...] ({len(values)} in all)"
