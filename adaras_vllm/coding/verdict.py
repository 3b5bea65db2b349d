"""How a candidate's run is judged: what came back from its sandbox, turned into a verdict.

The verdict comes from the launcher's own news first, then the in-sandbox runner's
token-checked record, then how the candidate exited; never from anything the candidate
could fake (its exit code, its output, a record without the run's token).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("pass", "fail", "timeout", "error")


@dataclass(frozen=True)
class ExecResult:
    """One candidate's verdict: ``status`` in pass/fail/timeout/error, with why."""

    status: str
    reason: str
    seconds: float
    output: str = ""  # the last bytes of what the candidate printed (stdout then stderr)
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class Streams:
    """What came back from one launcher: output (capped), the verdict and setup channels."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    status: bytearray = field(default_factory=bytearray)
    setup: bytearray = field(default_factory=bytearray)
    printed: int = 0
    over_output: bool = False
    killed_late: bool = False


def tail(streams: Streams, n: int = 4000) -> str:
    text = bytes(streams.stdout).decode("utf-8", "replace")
    err = bytes(streams.stderr).decode("utf-8", "replace")
    if err:
        text = f"{text}\n[stderr]\n{err}" if text else err
    return text[-n:]


def verdict(streams: Streams, code: int | None, news: str, token: str,
             limits: Any, seconds: float, isolation: str,
             memory_hit: bool = False) -> ExecResult:
    """The result, from the launcher's news first, then the runner's token-checked verdict,
    then how the candidate exited (never from what the candidate could fake)."""
    wall_timeout = news == "timeout"
    killed_by, cpu_used = None, -1.0
    if news.startswith("signal "):  # "signal N cpu SECONDS"
        fields = news.split()
        killed_by, cpu_used = int(fields[1]), float(fields[3])
    output = tail(streams)

    def result(status: str, reason: str) -> ExecResult:
        return ExecResult(status, reason, round(seconds, 4), output, isolation)

    if streams.over_output:
        return result("error", f"printed more than {limits.output_bytes} bytes (output cap)")
    if streams.killed_late or wall_timeout:
        return result("timeout", f"wall-time limit of {limits.wall_s:g} s exceeded")
    record = reported(streams.status, token)
    if record is not None and code == 0:
        return result(record["status"], record["reason"])
    if killed_by is not None:
        cpu = max(1, round(limits.cpu_s or limits.wall_s))  # what the launcher set
        if killed_by == signal.SIGXCPU and cpu_used >= cpu - 0.05:
            return result("timeout", f"CPU-time limit of {cpu:g} s exceeded")
        if killed_by == signal.SIGXFSZ:
            return result("error", f"wrote a file over {limits.file_bytes} bytes (file cap)")
        try:
            name = signal.Signals(killed_by).name
        except ValueError:
            name = str(killed_by)
        why = " at the sandbox's memory limit" if memory_hit else ""
        return result("error", f"killed by signal {name}{why}")
    if streams.status and record is None:
        return result("error", "the verdict channel was written to by the candidate")
    return result("error", f"exited with code {code} before its tests finished "
                           "(sys.exit, os._exit or a crash)")


def reported(raw: bytearray, token: str) -> dict | None:
    """The runner's verdict when `raw` is exactly one well-formed record with our token."""
    if len(raw) > 4096:  # a real verdict is one short line; anything else was tampered with
        return None
    try:
        record = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if (not isinstance(record, dict) or record.get("token") != token
            or record.get("status") not in STATUSES or not isinstance(record.get("reason"), str)):
        return None
    return record
