"""Run untrusted generated code against its tests, each candidate in a fresh sandbox.

Model-written programs loop forever, fork, allocate without bound, print megabytes, delete
files and call ``os._exit``; any of them must cost one verdict, never the grader, the
machine or the user's files. Each candidate runs in a new process started by
``launcher.py`` (namespaces, chroot, own uid, resource limits: see there), with a wall and a
CPU time limit, an address-space limit, a cap on what it may print, and a minimal
environment. The grader reads the verdict the in-sandbox runner writes after the tests; a
candidate that ends any other way gets a status and a reason from how it ended.

This runs in the CLI commands that grade (traces, maps build, gate train, eval), never in
the server process.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from queue import Queue

from .cgroups import slot_cgroups
from .verdict import ExecResult, Streams, verdict

__all__ = ["ExecResult", "Isolation", "Job", "SandboxLimits", "SandboxPool",
           "SandboxUnavailable", "check_sandbox", "namespaces_available", "run_candidate"]

_HERE = Path(__file__).resolve().parent
_LAUNCHER = _HERE / "launcher.py"
_RUNNER_SOURCE = (_HERE / "candidate_runner.py").read_text(encoding="utf-8")
# Per-slot uids for candidates: far above any account a system creates, one per pool slot,
# so a slot's process limit and its leftovers are its own.
_BASE_UID = 1_700_000_000
_MAX_SLOTS = 256
_GRACE_S = 5.0  # the launcher enforces the wall limit; the grader backs it up after this


@dataclass(frozen=True)
class SandboxLimits:
    """What one candidate may use. Memory and processes bound a fork+allocate bomb to
    ``processes × memory_bytes`` per slot."""

    wall_s: float = 10.0
    cpu_s: float | None = None  # default: the wall limit
    memory_bytes: int = 1 << 30  # address space of each process
    processes: int = 8
    output_bytes: int = 1 << 20
    file_bytes: int = 16 << 20
    open_files: int = 64
    total_memory_bytes: int = 2 << 30  # the whole sandbox, where cgroups are available

    def __post_init__(self) -> None:
        if not (0 < self.wall_s <= 3600):
            raise ValueError(f"wall_s must be in (0, 3600] seconds, got {self.wall_s!r}")
        if self.cpu_s is not None and not (0 < self.cpu_s <= 3600):
            raise ValueError(f"cpu_s must be in (0, 3600] seconds, got {self.cpu_s!r}")
        for name in ("memory_bytes", "processes", "output_bytes", "file_bytes", "open_files",
                     "total_memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def with_wall(self, wall_s: float | None) -> SandboxLimits:
        if wall_s is None:
            return self
        return replace(self, wall_s=wall_s,
                       cpu_s=None if self.cpu_s is None else min(self.cpu_s, wall_s))


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could hide, as reported with every result."""

    namespaces: bool  # own mount/PID/network namespaces and a chroot of system dirs only
    own_uid: bool  # a uid of the candidate's own (root: one per slot; else in a user ns)
    cgroups: bool = False  # the slot's memory and pids cgroups bound the whole sandbox
    user_namespace: bool = False  # unprivileged: the namespaces hang off a user namespace

    @property
    def mode(self) -> str:
        return "namespaces" if self.namespaces else "limits-only"

    def describe(self) -> str:
        limit = ", memory+pids cgroup" if self.cgroups else ""
        if self.namespaces:
            how = " (user namespace, no root)" if self.user_namespace else ""
            return (f"namespaces{how}: no network, only system directories and Python visible, "
                    f"{'own uid' if self.own_uid else 'same uid'}{limit}")
        return (f"process limits only ({'own uid' if self.own_uid else 'same uid as the grader'}"
                "): network and files are NOT isolated (allowed by --allow-unisolated)")


_isolation_lock = threading.Lock()
_namespaces_work: bool | None = None  # probed once per process, never changed afterwards


class SandboxUnavailable(OSError):
    """The sandbox cannot run candidates safely here; the message says why and what to do."""


_pythons: dict[str | None, tuple[str, str]] = {}
_namespaces_why = ""


def _python(chosen: str | None = None) -> tuple[str, str]:
    """(interpreter, its installation prefix) candidates run on: ``chosen``
    (``--sandbox-python``), else the base installation of the running Python, never the
    project's venv."""
    if chosen in _pythons:
        return _pythons[chosen]
    if chosen is None:
        prefix = os.path.realpath(sys.base_prefix)
        exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        if not exe.startswith(prefix + os.sep):
            candidate = Path(prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
            exe = str(candidate) if candidate.exists() else exe
    else:
        exe = os.path.realpath(chosen)
        try:
            prefix = subprocess.run([exe, "-I", "-c", "import sys; print(sys.base_prefix)"],
                                    capture_output=True, text=True, timeout=60,
                                    check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise SandboxUnavailable(f"--sandbox-python {chosen} cannot be run ({e}); name "
                                     "a Python 3 interpreter, e.g. /usr/bin/python3") from None
        prefix = os.path.realpath(prefix)
    _pythons[chosen] = (exe, prefix)
    return exe, prefix


def namespaces_available(python: str | None = None) -> bool:
    """Whether this process may create the sandbox's namespaces, as root or through a user
    namespace (probed once, with a candidate that does nothing; no candidate's behaviour
    can change the answer)."""
    global _namespaces_work
    with _isolation_lock:
        if _namespaces_work is None:
            probe = _in_a_slot(0, lambda slot: _launch("", "", None, SandboxLimits(wall_s=30),
                                                       slot, True, chosen_python=python))
            _namespaces_work = probe is not None
        return _namespaces_work


def _refusal() -> SandboxUnavailable:
    why = _namespaces_why or "the OS refused the namespaces"
    return SandboxUnavailable(
        f"the code sandbox cannot isolate candidates here ({why}): run as root, or enable "
        "unprivileged user namespaces "
        "(user.max_user_namespaces > 0, and kernel.unprivileged_userns_clone=1 or an "
        "AppArmor profile that allows them), or pass --allow-unisolated to run candidates "
        "with process limits only (network and files NOT isolated)")


def check_sandbox(allow_unisolated: bool = False, python: str | None = None) -> str:
    """Run an empty candidate once, before any engine starts: a machine that cannot
    sandbox fails now, not after hours of sampling. Returns how candidates are isolated."""
    return run_candidate("", "", allow_unisolated=allow_unisolated, python=python).isolation


def run_candidate(
    candidate: str, tests: str, entry_point: str | None = None,
    limits: SandboxLimits = SandboxLimits(), *, slot: int = 0, isolate: bool | None = None,
    setup: str = "", allow_unisolated: bool = False, python: str | None = None,
) -> ExecResult:
    """Run `setup` (the problem's own code), `candidate`, then `tests` in a fresh sandbox and
    say how it went.

    `isolate`: None uses namespaces (as root, or through a user namespace; probed once)
    and refuses (`SandboxUnavailable`) when they cannot be had, unless `allow_unisolated`
    accepts process limits only (the result's `isolation` says which ran); True requires
    them; False skips them. Without namespaces, root refuses to run a candidate that would
    keep uid 0. `python`: the interpreter candidates run on (default: the base
    installation of the running Python).
    """
    for name, value in (("candidate", candidate), ("tests", tests), ("setup", setup)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str of Python source, got {type(value).__name__}")
    if isolate is None:
        isolate = namespaces_available(python)
        if not isolate and not allow_unisolated:
            raise _refusal()
    elif isolate and not namespaces_available(python):
        raise _refusal()
    result = _in_a_slot(slot, lambda claimed: _launch(candidate, tests, entry_point, limits,
                                                      claimed, isolate, setup, python))
    if result is None:  # namespaces worked at the probe and not now: never run without them
        raise SandboxUnavailable("the OS refused the sandbox's namespaces after allowing "
                                 "them earlier in this process")
    return result


def _in_a_slot(preferred: int, run: Callable[[int], ExecResult | None]) -> ExecResult | None:
    """Run with a slot (uid, cgroups) no other sandbox uses meanwhile, in this process or
    any other of this user: slots are claimed with a lock file each."""
    locks = Path(tempfile.gettempdir()) / f"adaras-sandbox-{os.geteuid()}"
    locks.mkdir(mode=0o700, exist_ok=True)
    if locks.stat().st_uid != os.geteuid() or locks.is_symlink():
        raise SandboxUnavailable(f"{locks} belongs to another user; remove it")
    first = preferred % _MAX_SLOTS
    order = [first] + [s for s in range(_MAX_SLOTS) if s != first]
    for attempt, slot in enumerate([*order, first]):
        waits = attempt == len(order)  # every slot busy: wait for the preferred one
        fd = os.open(locks / f"slot-{slot}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if waits else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            return run(slot)
        finally:
            os.close(fd)  # releases the lock
    raise AssertionError("unreachable: the last try waits for its lock")


def _launch(candidate: str, tests: str, entry_point: str | None, limits: SandboxLimits,
            slot: int, isolate: bool, setup: str = "", chosen_python: str | None = None
            ) -> ExecResult | None:
    """One candidate in one sandbox; None when the OS refused the namespaces."""
    global _namespaces_why
    python, prefix = _python(chosen_python)
    root = os.geteuid() == 0
    user_namespace = isolate and not root
    if user_namespace and not os.access(python, os.X_OK):
        raise SandboxUnavailable(
            f"{python} cannot be run by this user, so not by the sandbox either; pass "
            "--sandbox-python PATH naming one that can (e.g. /usr/bin/python3)")
    # In a chroot the interpreter is bind-mounted where any uid can run it; without one an
    # unprivileged uid can only run an interpreter whose path all users may enter.
    own_uid = user_namespace or (root and (isolate or _runnable_by_others(python)))
    if root and not own_uid:
        raise SandboxUnavailable(
            f"without namespaces a candidate would run as root: {python} is not reachable by "
            "other users; pass --sandbox-python PATH naming one that is (e.g. "
            "/usr/bin/python3), or allow namespaces")
    cgroups = slot_cgroups(slot, total_memory_bytes=limits.total_memory_bytes,
                           processes=limits.processes)
    failures_before = cgroups.memory_failures()
    isolation = Isolation(namespaces=isolate, own_uid=own_uid, cgroups=bool(cgroups.procs),
                          user_namespace=user_namespace)
    work_dir = None if isolate else tempfile.mkdtemp(prefix="adaras-candidate-")
    uid = _BASE_UID + slot if own_uid else os.getuid()
    gid = _BASE_UID + slot if own_uid else os.getgid()
    if work_dir is not None and own_uid:
        os.chown(work_dir, uid, gid)
    status_r, status_w = os.pipe()
    setup_r, setup_w = os.pipe()
    token = secrets.token_hex(16)
    config = {
        "isolate": isolate, "status_fd": status_w, "setup_fd": setup_w, "python": python,
        "python_prefix": prefix, "runner_source": _RUNNER_SOURCE, "uid": uid, "gid": gid,
        "work_dir": work_dir, "wall_s": limits.wall_s,
        "cpu_s": max(1, round(limits.cpu_s or limits.wall_s)),
        "memory_bytes": limits.memory_bytes, "processes": limits.processes,
        "file_bytes": limits.file_bytes, "open_files": limits.open_files,
        "tmpfs_bytes": max(4 * limits.file_bytes, 64 << 20), "cgroup_procs": list(cgroups.procs),
        "user_namespace": user_namespace, "outer_uid": os.geteuid(), "outer_gid": os.getegid(),
    }
    payload = json.dumps({"setup": setup, "candidate": candidate, "tests": tests,
                          "entry_point": entry_point, "token": token}).encode()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", str(_LAUNCHER), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(status_w, setup_w), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/", start_new_session=True,
        )
    finally:
        os.close(status_w)
        os.close(setup_w)
    try:
        streams = _exchange(proc, payload, status_r, setup_r, limits, start)
    finally:
        os.close(status_r)
        os.close(setup_r)
        if work_dir is not None:
            _kill_group(proc.pid)
            shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.monotonic() - start
    news = bytes(streams.setup).decode("utf-8", "replace").strip()
    if news.startswith("no-namespaces:"):
        _namespaces_why = news.removeprefix("no-namespaces:").strip()
        return None
    if news.startswith("setup-failed:"):
        raise SandboxUnavailable(f"the sandbox could not be set up: {news[14:].strip()}")
    return verdict(streams, proc.returncode, news, token, limits, seconds,
                    isolation.describe(), cgroups.memory_failures() > failures_before)


def _runnable_by_others(python: str) -> bool:
    path = Path(python)
    dirs_ok = all(os.stat(d).st_mode & 0o001 for d in path.parents)
    return dirs_ok and os.stat(path).st_mode & 0o005 == 0o005


def _exchange(proc: subprocess.Popen, payload: bytes, status_r: int, setup_r: int,
              limits: SandboxLimits, start: float) -> Streams:
    """Feed the payload, collect output (capped) and the verdict, until everything closes."""
    assert proc.stdin and proc.stdout and proc.stderr
    out = Streams()
    keep = 16 << 10  # bytes of each stream kept for the report
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    sel.register(status_r, selectors.EVENT_READ, "status")
    sel.register(setup_r, selectors.EVENT_READ, "setup")
    sent = 0
    deadline = start + limits.wall_s + _GRACE_S
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.killed_late = True
            _kill_group(proc.pid)
            break
        for key, _ in sel.select(min(remaining, 1.0)):
            fd = key.fd
            if key.data == "stdin":
                try:
                    sent += os.write(fd, payload[sent:sent + 65536])
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    sent = len(payload)
                if sent >= len(payload):
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            if key.data in ("status", "setup"):
                buf = out.status if key.data == "status" else out.setup
                if len(buf) < 1 << 16:
                    buf += chunk
                continue
            buf = out.stdout if key.data == "stdout" else out.stderr
            out.printed += len(chunk)
            buf += chunk
            if len(buf) > 2 * keep:
                del buf[: len(buf) - keep]
            if out.printed > limits.output_bytes and not out.over_output:
                out.over_output = True
                _kill_group(proc.pid)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream and not stream.closed:
            stream.close()
    sel.close()
    try:
        proc.wait(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
    return out


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class Job:
    """One candidate for the pool: its code, the problem's tests, and how to run them."""

    candidate: str
    tests: str
    entry_point: str | None = None
    wall_s: float | None = None  # None: the pool's limit
    setup: str = ""  # the problem's code run before the candidate (HumanEval's prompt)


class SandboxPool:
    """Runs many candidates at once, at most `workers` sandboxes at a time.

    Each worker owns a slot (its uid), so concurrent candidates never share a process limit.
    """

    def __init__(self, workers: int | None = None, limits: SandboxLimits = SandboxLimits(),
                 isolate: bool | None = None, allow_unisolated: bool = False,
                 python: str | None = None):
        workers = workers if workers is not None else (os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.limits = limits
        self.isolate = isolate
        self.allow_unisolated = allow_unisolated
        self.python = python

    def run(self, jobs: Sequence[Job],
            progress: Callable[[], None] | None = None) -> list[ExecResult]:
        """Every job's result, in job order."""
        slots: Queue[int] = Queue()
        for i in range(self.workers):
            slots.put(i)

        def one(job: Job) -> ExecResult:
            slot = slots.get()
            try:
                return run_candidate(job.candidate, job.tests, job.entry_point,
                                     self.limits.with_wall(job.wall_s), slot=slot,
                                     isolate=self.isolate, setup=job.setup,
                                     allow_unisolated=self.allow_unisolated,
                                     python=self.python)
            finally:
                slots.put(slot)
                if progress is not None:
                    progress()

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, jobs))
