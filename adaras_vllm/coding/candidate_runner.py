"""Runs inside the sandbox (passed to ``python -I -c``): the candidate, then its tests.

Stdlib only, no project imports (the project is not visible in there). The payload arrives
on stdin as JSON: ``setup`` (the problem's own code, e.g. HumanEval's prompt with its
imports and helpers), ``candidate``, ``tests``, ``entry_point`` and ``token``. The verdict goes
to file descriptor 3 as one JSON line carrying the token, written only after the tests
finish, so a candidate that leaves early (``sys.exit(0)``, ``os._exit(0)``) is never counted
as a pass: the grader then reports how it ended instead.

The candidate runs with ``__name__ == "candidate"``: code under ``if __name__ ==
"__main__":`` (demos, ``input()`` prompts) is not run. Tests that define
``check(candidate)`` (HumanEval) are called with the function named by ``entry_point``.
The tests run with the builtins as they were before the candidate ran (and this runner
holds its own references to what it calls), so a candidate that patches ``exec``,
``callable`` or ``AssertionError`` does not change how its tests run. A program written
to fake its own verdict by inspecting this runner can still do so: the sandbox contains
hostile code, it does not make a verdict tamper-proof.
"""

import builtins
import json
import os
import sys
import traceback

_PRISTINE = dict(builtins.__dict__)
_exec, _compile, _callable, _dumps = exec, compile, callable, json.dumps
_BaseException = BaseException


def _reason(exc: BaseException, filename: str) -> str:
    """`Type: message (file line N)` for the innermost frame of `filename`."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        text = f"{type(exc).__name__}: {exc.msg}"
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
    return f"{text} ({filename} line {line})" if line else text


def _main() -> None:
    payload = json.loads(sys.stdin.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    token = payload["token"]
    status = os.fdopen(3, "w")

    def verdict(kind: str, reason: str) -> None:
        status.write(_dumps({"token": token, "status": kind, "reason": reason[:2000]}))
        status.flush()

    candidate, tests, entry = payload["candidate"], payload["tests"], payload.get("entry_point")
    setup = payload.get("setup") or ""
    del payload
    namespace = {"__name__": "candidate", "__builtins__": dict(_PRISTINE)}
    try:
        _exec(_compile(setup, "setup.py", "exec"), namespace)
    except _BaseException as e:  # noqa: BLE001
        verdict("error", "the problem's setup code failed: " + _reason(e, "setup.py"))
        return
    try:
        _exec(_compile(candidate, "candidate.py", "exec"), namespace)
    except _BaseException as e:  # noqa: BLE001 - every way the candidate fails is reported
        verdict("error", "the candidate failed before its tests: " + _reason(e, "candidate.py"))
        return
    builtins.__dict__.update(_PRISTINE)
    namespace["__builtins__"] = dict(_PRISTINE)
    try:
        _exec(_compile(tests, "tests.py", "exec"), namespace)
        check = namespace.get("check")
        if entry and _callable(check):
            if entry not in namespace:
                raise NameError(f"the candidate defines no {entry!r} (the entry point)")
            check(namespace[entry])
    except _BaseException as e:  # noqa: BLE001
        verdict("fail", _reason(e, "tests.py"))
        return
    verdict("pass", "all tests passed")


_main()
