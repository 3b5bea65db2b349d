"""Reading JSONL files line by line, with errors that name the file, line and key at fault.

The problems and traces formats (`adaras_vllm.pipeline.traces`) and the coding problems
format (`adaras_vllm.coding.problems`) are all read through these, so a malformed line is
refused the same way, naming where it is, rather than silently skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["JsonLine", "TraceFormatError", "json_lines"]


class TraceFormatError(ValueError):
    """A problems/traces file line that cannot be read; the message names file, line and key."""


def json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
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


class JsonLine:
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
