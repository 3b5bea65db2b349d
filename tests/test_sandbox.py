"""The code grader's sandbox: verdicts for honest candidates, containment of hostile ones.

Every hostile candidate here is what model-written code does by accident or on purpose;
each must cost one verdict and leave the host, its files and its secrets untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nobody import (
    CAN_RUN_AS_NOBODY,
    DEBIAN_PYTHON,
    NOBODY,
    SKIP_REASON,
    as_nobody,
    readable_copy,
)

from adaras_vllm.coding.sandbox import (
    ExecResult,
    Job,
    SandboxLimits,
    SandboxPool,
    SandboxUnavailable,
    _python,
    _runnable_by_others,
    namespaces_available,
    run_candidate,
)

PROJECT = Path(__file__).resolve().parents[1]
# Candidates that finish on their own get a wall limit no loaded machine reaches (the suite
# runs beside engine tests); those meant to hit the limit get a short one.
QUICK = SandboxLimits(wall_s=30)
SHORT = SandboxLimits(wall_s=3)
NAMESPACES = namespaces_available()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES, reason="this OS refuses namespaces to this user (needs root or user "
    "namespaces): network and files are not isolated here")
# Without namespaces root runs candidates only under another uid, which needs an
# interpreter all users can reach.
ROOT_WITHOUT_RUNNABLE_PYTHON = os.geteuid() == 0 and not _runnable_by_others(_python()[0])
# ... which --sandbox-python names where the default is not (Debian's, for every user).
FALLBACK_PYTHON = (str(DEBIAN_PYTHON) if ROOT_WITHOUT_RUNNABLE_PYTHON
                   and DEBIAN_PYTHON.is_file() and _runnable_by_others(str(DEBIAN_PYTHON))
                   else None)
needs_fallback = pytest.mark.skipif(
    ROOT_WITHOUT_RUNNABLE_PYTHON and FALLBACK_PYTHON is None,
    reason=f"as root, limits-only mode refuses to run: {_python()[0]} is not reachable by "
    "other users, and no interpreter that is was found")
CGROUPS = "cgroup" in run_candidate("", "").isolation


_run_as: list[str] = ["root"]  # who runs the grader: set per test by the as_user fixture


def run(candidate: str, tests: str = "assert True\n", **kw: object) -> ExecResult:
    kw.setdefault("limits", QUICK)
    if _run_as[0] == "nobody":
        (result,) = run_as_nobody([{"candidate": textwrap.dedent(candidate),
                                    "tests": textwrap.dedent(tests), **kw}])
        if isinstance(result, SandboxUnavailable):
            raise result
        return result
    return run_candidate(textwrap.dedent(candidate), textwrap.dedent(tests), **kw)


@pytest.fixture(scope="session")
def nobody_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox's own files (stdlib only) where the user nobody can read them."""
    return readable_copy(tmp_path_factory.mktemp("sandbox-as-nobody"),
                         {"sandbox_as_user.py": PROJECT / "tests" / "sandbox_as_user.py"})


_NOBODY_ROOT: list[Path] = []


def run_as_nobody(jobs: list[dict], block_namespaces: bool = False, user: str = "nobody"
                  ) -> list[ExecResult | SandboxUnavailable]:
    """The jobs graded by a grader running as the user nobody (or root: ``user``), on
    Debian's Python; ``block_namespaces``: on a kernel that refuses it namespaces."""
    for job in jobs:
        limits = job.get("limits")
        if isinstance(limits, SandboxLimits):
            job["limits"] = dataclasses.asdict(limits)
    cmd = [str(DEBIAN_PYTHON), "-s", "-B", str(_NOBODY_ROOT[0] / "sandbox_as_user.py")]
    env = {**os.environ, "PYTHONPATH": str(_NOBODY_ROOT[0])}
    out = subprocess.run(cmd + (["--block-namespaces"] if block_namespaces else []),
                         input=json.dumps(jobs), capture_output=True, text=True, env=env,
                         timeout=600, **(as_nobody() if user == "nobody" else {}))
    assert out.returncode == 0, out.stderr[-3000:]
    return [SandboxUnavailable(r["unavailable"]) if "unavailable" in r else ExecResult(**r)
            for r in json.loads(out.stdout)]


needs_nobody = pytest.mark.skipif(not CAN_RUN_AS_NOBODY, reason=SKIP_REASON)


@pytest.fixture(params=["root", "nobody"])
def as_user(request: pytest.FixtureRequest, nobody_package: Path):
    """Each hostile test, with the grader as root and as an ordinary user (nobody), whose
    sandbox is built on a user namespace."""
    if request.param == "nobody":
        if not CAN_RUN_AS_NOBODY:
            pytest.skip(SKIP_REASON)
        _NOBODY_ROOT[:] = [nobody_package]
    _run_as[0] = request.param
    yield request.param
    _run_as[0] = "root"


def _gone(processes: Callable[[], list[int]], wait_s: float = 10.0) -> bool:
    """Whether ``processes()`` becomes empty: the kernel tears down a dead namespace's
    processes asynchronously, so the last ones may take a moment to disappear."""
    deadline = time.monotonic() + wait_s
    while processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


# Honest candidates.

@pytest.mark.usefixtures("as_user")
def test_a_correct_candidate_passes() -> None:
    r = run("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n")
    assert (r.status, r.reason) == ("pass", "all tests passed")


def test_a_failing_assert_is_a_fail_naming_the_assertion_line() -> None:
    r = run("def add(a, b):\n    return a - b\n",
            "assert add(1, 1) == 0\nassert add(2, 3) == 5\n")
    assert r.status == "fail"
    assert r.reason == "AssertionError (tests.py line 2)"


def test_an_exception_raised_by_the_tests_is_a_fail_with_its_type() -> None:
    r = run("def f(x):\n    return x[10]\n", "assert f([1]) == 1\n")
    assert r.status == "fail" and r.reason.startswith("IndexError")


def test_humaneval_check_is_called_with_the_entry_point() -> None:
    tests = "def check(candidate):\n    assert candidate(3) == 9\n"
    assert run("def square(x):\n    return x * x\n", tests, entry_point="square").passed
    wrong = run("def square(x):\n    return x + x\n", tests, entry_point="square")
    assert wrong.status == "fail"


def test_a_missing_entry_point_is_a_fail_naming_it() -> None:
    r = run("def other(x):\n    return x\n", "def check(candidate):\n    pass\n",
            entry_point="square")
    assert r.status == "fail" and "'square'" in r.reason


def test_a_syntax_error_is_an_error_before_the_tests() -> None:
    r = run("def f(x)\n    return x\n", "assert f(1) == 1\n")
    assert r.status == "error"
    assert "SyntaxError" in r.reason and "candidate.py line 1" in r.reason


def test_main_guarded_code_of_the_candidate_does_not_run() -> None:
    r = run("def f():\n    return 1\nif __name__ == '__main__':\n    input()\n",
            "assert f() == 1\n")
    assert r.passed


def test_the_python_standard_library_is_available() -> None:
    r = run("import collections, heapq, itertools, math, re\n"
            "def f():\n    return math.gcd(12, 18)\n", "assert f() == 6\n")
    assert r.passed


# Hostile candidates.

@pytest.mark.usefixtures("as_user")
def test_an_infinite_loop_is_a_timeout_at_the_wall_limit() -> None:
    r = run("while True:\n    pass\n", limits=SHORT)
    assert r.status == "timeout" and "3 s" in r.reason
    assert r.seconds < SHORT.wall_s + 2


def test_a_sleeping_candidate_is_a_timeout_at_the_wall_limit() -> None:
    r = run("import time\ntime.sleep(60)\n", limits=SHORT)
    assert r.status == "timeout" and "wall-time" in r.reason


@pytest.mark.usefixtures("as_user")
def test_cpu_time_is_limited_separately_from_wall_time() -> None:
    r = run("while True:\n    pass\n", limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert r.status == "timeout" and "CPU-time limit of 1 s" in r.reason


@pytest.mark.usefixtures("as_user")
def test_a_fork_bomb_is_contained_and_leaves_no_process_behind() -> None:
    slot = 5
    r = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        pass\n", slot=slot, limits=SHORT)
    assert r.status in ("timeout", "error")
    if _run_as[0] == "nobody":  # the grader has exited: nothing of nobody's is left
        assert _gone(lambda: _processes_of(NOBODY))
    elif os.geteuid() == 0:  # candidates of slot 5 run as their own uid
        assert _gone(lambda: _processes_of(1_700_000_000 + slot))
    assert run("assert True\n", slot=slot).passed  # the slot still works


@pytest.mark.usefixtures("as_user")
def test_a_process_count_limit_stops_forking() -> None:
    r = run("""
        import os, sys
        children = 0
        try:
            for _ in range(64):
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                children += 1
        except OSError as e:
            print("refused after", children)
            sys.exit(0)
        """, limits=SandboxLimits(wall_s=30, processes=4))
    assert "refused after" in r.output
    assert int(r.output.split("refused after")[1].split()[0]) <= 4


@pytest.mark.usefixtures("as_user")
def test_a_memory_bomb_is_an_error_not_an_out_of_memory_kill() -> None:
    r = run("block = bytearray(64 << 30)\n")
    assert r.status == "error" and "MemoryError" in r.reason


@pytest.mark.usefixtures("as_user")
def test_a_growing_memory_bomb_stops_at_the_address_space_limit() -> None:
    r = run("keep = []\nwhile True:\n    keep.append(bytearray(16 << 20))\n",
            limits=SandboxLimits(wall_s=30, memory_bytes=256 << 20))
    assert r.status == "error" and "MemoryError" in r.reason


@pytest.mark.usefixtures("as_user")
def test_huge_output_is_cut_at_the_cap_and_reported() -> None:
    r = run("while True:\n    print('x' * 10000)\n",
            limits=SandboxLimits(wall_s=30, output_bytes=100_000))
    assert r.status == "error" and "output cap" in r.reason
    assert len(r.output) <= 4000


@pytest.mark.usefixtures("as_user")
def test_os_exit_zero_before_the_tests_is_not_a_pass() -> None:
    r = run("import os\nos._exit(0)\n", "assert False\n")
    assert r.status == "error" and "before its tests finished" in r.reason


@pytest.mark.usefixtures("as_user")
def test_sys_exit_zero_is_not_a_pass() -> None:
    assert run("import sys\nsys.exit(0)\n", "assert False\n").status == "error"
    assert run("def f():\n    return 1\n", "import sys\nsys.exit(0)\n").status == "fail"


@pytest.mark.usefixtures("as_user")
def test_a_forged_verdict_on_the_status_channel_is_not_believed() -> None:
    r = run("""
        import os, json
        os.write(3, json.dumps({"token": "guess", "status": "pass", "reason": "ok"}).encode())
        os._exit(0)
        """, "assert False\n")
    assert r.status == "error"


@pytest.mark.parametrize("code", [1, 124, 125, 126, 137, 152, 153])
@pytest.mark.usefixtures("as_user")
def test_exit_codes_cannot_speak_for_the_sandbox(code: int) -> None:
    r = run(f"import os\nos._exit({code})\n", "assert False\n")
    assert r.status == "error" and f"exited with code {code}" in r.reason
    assert run("x = 1\n").isolation == run("").isolation  # still isolated


@pytest.mark.usefixtures("as_user")
def test_a_candidate_signalling_itself_is_not_taken_for_a_limit() -> None:
    for sig in ("SIGXCPU", "SIGKILL"):
        r = run(f"import os, signal\nos.kill(os.getpid(), signal.{sig})\n")
        assert (r.status, r.reason) == ("error", f"killed by signal {sig}")
    said = run("import os\nprint('MemoryError', flush=True)\nos._exit(1)\n")
    assert "address space" not in said.reason


def test_garbage_on_the_verdict_channel_cannot_crash_the_pool() -> None:
    jobs = [Job("x = 1\n", "assert x == 1\n"),
            Job("import os\nos.write(3, b'[' * 70000)\n", "assert True\n"),
            Job("import os\nos.write(3, b'{\"a\":' * 40000)\n", "assert True\n"),
            Job("x = 1\n", "assert x == 1\n")]
    results = SandboxPool(workers=2, limits=QUICK).run(jobs)
    assert [r.status for r in results] == ["pass", "error", "error", "pass"]


def test_patching_builtins_does_not_change_how_the_tests_run() -> None:
    patches = [
        "import builtins\n_e = builtins.exec\nbuiltins.exec = lambda *a, **k: None\n",
        "import builtins\nbuiltins.AssertionError = KeyError\n",
        "__builtins__['callable'] = lambda o: False\n",
        "import json\n_d = json.dumps\n"
        "json.dumps = lambda o, **k: _d({**o, 'status': 'pass'})\n",
    ]
    for patch in patches:
        r = run(patch + "def add(a, b):\n    return a - b\n",
                "def check(candidate):\n    assert candidate(1, 1) == 2\n", entry_point="add")
        assert r.status == "fail", (patch, r)


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_system_v_shared_memory_is_off() -> None:
    r = run("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.shmget(0, ctypes.c_size_t(256 << 20), 0o1000 | 0o600))
        """)
    assert r.output.split() == ["-1"]


@pytest.mark.skipif(not CGROUPS, reason="no writable memory/pids cgroups here")
def test_memory_no_address_space_limit_sees_is_bounded_by_the_cgroup() -> None:
    r = run("""
        import os, time
        for _ in range(6):
            if os.fork() == 0:
                break
        try:
            for i in range(60):
                fd = os.memfd_create(f"m{i}")
                for _ in range(16):
                    os.write(fd, b"x" * (1 << 20))
        except OSError:
            pass
        time.sleep(2)
        """, limits=SandboxLimits(wall_s=30, total_memory_bytes=512 << 20))
    assert r.status == "error" and r.reason == ("killed by signal SIGKILL at the sandbox's "
                                                "memory limit")


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_the_sandbox_init_and_host_processes_are_hidden() -> None:
    r = run("""
        import os
        print(sorted(p for p in os.listdir('/proc') if p.isdigit()) == [str(os.getpid())])
        print(os.path.exists('/proc/1/cmdline'))
        """)
    assert r.output.split() == ["True", "False"]


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_etc_holds_only_what_programs_need() -> None:
    r = run("import os\nprint(sorted(os.listdir('/etc')))\n")
    assert "passwd" in r.output and "hostname" not in r.output and "shadow" not in r.output


@pytest.mark.usefixtures("as_user")
def test_the_graders_environment_is_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "adaras-test-secret-4be1c2"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("ADARAS_TEST_SECRET", secret)
    r = run("import os\nprint(dict(os.environ))\n")
    assert r.passed
    assert secret not in r.output and "OPENAI_API_KEY" not in r.output
    assert "PATH" in r.output


def environ_of(pid: int, wait_s: float = 10.0) -> str:
    """The environment of a just-started process. Popen returns once exec has begun, but
    the kernel fills /proc/PID/environ a moment later: read until it appears."""
    deadline = time.monotonic() + wait_s
    while True:
        text = Path(f"/proc/{pid}/environ").read_text()
        if text or time.monotonic() > deadline:
            return text
        time.sleep(0.01)


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_other_processes_environments_are_not_readable() -> None:
    secret = "adaras-test-secret-7d0e55"
    holder = subprocess.Popen(["sleep", "30"], env={"ADARAS_TEST_SECRET": secret})
    try:
        assert secret in environ_of(holder.pid)  # it is there, for the host
        r = run(f"""
            import os
            for pid in os.listdir('/proc') + ['{holder.pid}', '1']:
                if pid.isdigit():
                    try:
                        print(open(f'/proc/{{pid}}/environ', 'rb').read())
                    except OSError as e:
                        print(pid, type(e).__name__)
            """)
    finally:
        holder.kill()
        holder.wait()
    assert r.passed and secret not in r.output


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_a_socket_cannot_reach_a_server_on_the_host() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(4)
    port = server.getsockname()[1]
    connected: list[bool] = []

    def accept() -> None:
        try:
            server.accept()
            connected.append(True)
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    r = run(f"""
        import socket
        s = socket.socket()
        s.settimeout(2)
        s.connect(('127.0.0.1', {port}))
        """)
    listener.join()
    server.close()
    assert connected == []
    assert r.status == "error" and ("ConnectionRefused" in r.reason or "OSError" in r.reason)


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_no_network_interface_is_up() -> None:
    r = run("""
        import socket
        try:
            socket.create_connection(('1.1.1.1', 80), timeout=2)
            print('reached')
        except OSError as e:
            print('unreachable', e.errno)
        """)
    assert "unreachable" in r.output and "reached\n" not in r.output


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_the_project_files_are_not_visible() -> None:
    r = run(f"""
        import os
        print(os.path.exists({str(PROJECT / 'README.md')!r}))
        print(os.path.exists({str(PROJECT)!r}))
        print(os.path.exists('/root/.bashrc'), os.path.exists('/home'))
        """)
    assert r.output.split() == ["False", "False", "False", "False"]


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_writing_outside_the_work_dir_leaves_nothing_on_the_host(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # not permissions: the directory must be out of reach
    targets = [open_dir / "pwned.txt", PROJECT / "pwned.txt", Path("/etc/pwned.txt"),
               Path("/usr/pwned.txt")]
    r = run(f"""
        import os
        for path in {[str(t) for t in targets]!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'w') as f:
                    f.write('pwned')
                print('wrote', path)
            except OSError as e:
                print('refused', path, type(e).__name__)
        with open('scratch.txt', 'w') as f:
            f.write('fine')
        """)
    assert not any(t.exists() for t in targets)
    assert "refused" in r.output and r.passed


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_deleting_files_cannot_touch_the_host(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("still here")
    tmp_path.chmod(0o777)
    keep.chmod(0o666)
    r = run(f"""
        import os, shutil
        for path in [{str(keep)!r}, '/etc/hostname', '/usr/bin/env']:
            try:
                os.remove(path)
            except OSError as e:
                print('refused', type(e).__name__)
        shutil.rmtree({str(PROJECT / 'adaras_vllm')!r}, ignore_errors=True)
        shutil.rmtree('/usr', ignore_errors=True)
        """)
    assert keep.read_text() == "still here"
    assert (PROJECT / "adaras_vllm" / "coding" / "sandbox.py").exists()
    assert Path("/usr/bin/env").exists()
    assert r.output.count("refused") == 3


@needs_namespaces
@pytest.mark.usefixtures("as_user")
def test_each_candidate_gets_a_fresh_empty_work_dir() -> None:
    first = run("open('left.txt', 'w').write('x')\nimport os\nprint(os.getcwd())\n")
    second = run("import os\nprint(sorted(os.listdir('.')), os.getcwd())\n")
    assert first.passed and second.passed
    assert second.output.split()[0] == "[]"


@pytest.mark.skipif(not ROOT_WITHOUT_RUNNABLE_PYTHON, reason="the interpreter is reachable")
def test_without_namespaces_root_never_runs_a_candidate_as_root() -> None:
    with pytest.raises(SandboxUnavailable, match="would run as root.*--sandbox-python PATH"):
        run("x = 1\n", isolate=False)


def test_without_namespaces_a_sandbox_python_others_can_reach_is_accepted() -> None:
    if FALLBACK_PYTHON is None:
        pytest.skip("the default interpreter is reachable, or no other one is")
    r = run("import sys\nprint(sys.executable)\n", isolate=False, python=FALLBACK_PYTHON)
    assert r.passed and "own uid" in r.isolation
    assert Path(r.output.strip()).resolve() == Path(FALLBACK_PYTHON).resolve()


@needs_fallback
def test_without_namespaces_the_work_dir_is_removed_afterwards() -> None:
    r = run("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())\n",
            isolate=False, python=FALLBACK_PYTHON)
    work_dir = Path(r.output.strip())
    assert r.passed and work_dir.name.startswith("adaras-candidate-")
    assert not work_dir.exists()
    assert "NOT isolated" in r.isolation


@needs_fallback
def test_without_namespaces_limits_still_apply() -> None:
    fallback = {"isolate": False, "python": FALLBACK_PYTHON}
    assert run("while True:\n    pass\n", limits=SHORT, **fallback).status == "timeout"
    assert run("x = bytearray(64 << 30)\n", **fallback).status == "error"
    assert run("import os\nos._exit(0)\n", "assert False\n", **fallback).status == "error"


@pytest.mark.usefixtures("as_user")
def test_the_result_says_how_the_candidate_was_isolated() -> None:
    r = run("x = 1\n")
    if _run_as[0] == "nobody":
        assert r.isolation.startswith("namespaces (user namespace, no root): no network")
        assert "own uid" in r.isolation
    elif NAMESPACES:
        assert r.isolation.startswith("namespaces: no network")
    else:
        assert "NOT isolated" in r.isolation



# The pool.

def test_the_pool_returns_results_in_job_order() -> None:
    jobs = [Job(f"def f():\n    return {i}\n", f"assert f() == {i if i % 2 else -1}\n",
                wall_s=30.0) for i in range(6)]
    results = SandboxPool(workers=2).run(jobs)
    assert [r.status for r in results] == ["fail", "pass"] * 3


def test_the_pool_applies_each_jobs_own_time_limit() -> None:
    jobs = [Job("import time\ntime.sleep(30)\n", "assert True\n", wall_s=1.0),
            Job("x = 1\n", "assert x == 1\n")]
    slow, quick = SandboxPool(workers=2, limits=QUICK).run(jobs)
    assert slow.status == "timeout" and "1 s" in slow.reason
    assert quick.passed


def test_bad_limits_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="wall_s must be in"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValueError, match="memory_bytes must be a positive integer"):
        SandboxLimits(memory_bytes=-1)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        SandboxPool(workers=0)


def test_the_server_process_never_imports_the_sandbox() -> None:
    out = subprocess.run(
        [os.sys.executable, "-c", "import sys, adaras_vllm.server.app; "
         "print('adaras_vllm.coding.sandbox' in sys.modules)"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_the_problems_setup_runs_before_the_candidate() -> None:
    setup = ("from typing import List\n\ndef helper(x):\n    return x * 2\n\n"
             "def twice(x: List[int]):\n    \"\"\"stub\"\"\"\n")
    candidate = "def twice(x: List[int]):\n    return [helper(v) for v in x]\n"
    tests = "def check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n"
    assert run(candidate, tests, entry_point="twice", setup=setup).passed
    stub_only = run("", tests, entry_point="twice", setup=setup)
    assert stub_only.status == "fail"
    broken = run(candidate, tests, entry_point="twice", setup="raise ImportError('x')\n")
    assert broken.status == "error" and "setup code failed" in broken.reason


def test_concurrent_graders_never_share_a_slot() -> None:
    import fcntl
    import tempfile

    locks = Path(tempfile.gettempdir()) / f"adaras-sandbox-{os.geteuid()}"
    locks.mkdir(mode=0o700, exist_ok=True)
    held = os.open(locks / "slot-3.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # another grader is using slot 3
    try:
        r = run("import os\nprint(os.getuid())\n", slot=3)
    finally:
        os.close(held)
    if os.geteuid() == 0:
        assert int(r.output.split()[0]) != 1_700_000_000 + 3
    assert r.passed


# Without namespaces: refused, unless limits only are accepted.

@needs_nobody
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_without_namespaces_grading_refuses_naming_why_and_the_ways_out(
        user: str, nobody_package: Path) -> None:
    _NOBODY_ROOT[:] = [nobody_package]
    (refused,) = run_as_nobody([{"candidate": "x = 1\n", "tests": "assert True\n"}],
                               block_namespaces=True, user=user)
    assert isinstance(refused, SandboxUnavailable)
    message = str(refused)
    assert "cannot isolate candidates here (unshare: Operation not permitted)" in message
    assert "run as root" in message and "user namespaces" in message
    assert "--allow-unisolated" in message and "NOT isolated" in message


@needs_nobody
def test_without_namespaces_allow_unisolated_runs_limits_only_and_says_so(
        nobody_package: Path) -> None:
    _NOBODY_ROOT[:] = [nobody_package]
    ok, looping = run_as_nobody(
        [{"candidate": "def f():\n    return 1\n", "tests": "assert f() == 1\n",
          "allow_unisolated": True},
         {"candidate": "while True:\n    pass\n", "tests": "assert True\n",
          "allow_unisolated": True, "limits": {"wall_s": 2}}], block_namespaces=True)
    assert ok.passed and ok.isolation.startswith("process limits only (same uid")
    assert "NOT isolated" in ok.isolation
    assert looping.status == "timeout"


@pytest.mark.usefixtures("as_user")
def test_the_graders_session_keyring_is_out_of_reach() -> None:
    """A key the grader holds (an API token in its session keyring) is neither readable
    nor writable by a candidate, which would otherwise possess that keyring too."""
    import ctypes

    numbers = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(os.uname().machine)
    if numbers is None:
        pytest.skip("keyctl numbers known for x86_64 and aarch64 only")
    add_key, keyctl = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    secret = b"adaras-test-key-5f3a9e"
    key = libc.syscall(ctypes.c_long(add_key), b"user", b"adaras-test", secret,
                       ctypes.c_size_t(len(secret)), ctypes.c_int(-3))
    if key < 0:
        pytest.skip(f"this process cannot hold keys (errno {ctypes.get_errno()})")
    try:
        r = run(f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            buf = ctypes.create_string_buffer(4096)
            n = libc.syscall({keyctl}, 11, ctypes.c_int(-3), buf, 4096)  # READ @s: key ids
            ids = [int.from_bytes(buf.raw[i:i + 4], 'little') for i in range(0, max(n, 0), 4)]
            for k in ids + [{key}]:
                m = libc.syscall({keyctl}, 11, k, buf, 4096)
                print(k, buf.raw[:max(m, 0)])
            print('added', libc.syscall({add_key}, b'user', b'planted', b'x', 1,
                                        ctypes.c_int(-3)) > 0)
            """)
        assert r.passed and secret.decode() not in r.output, r.output
    finally:
        libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(3), ctypes.c_long(key))  # revoke


@pytest.mark.usefixtures("as_user")
def test_a_candidate_cannot_mount_memory_that_no_limit_counts() -> None:
    """Its own user and mount namespace would let it mount a tmpfs outside every rlimit:
    refused as an ordinary user's grader (no cgroup there); as root the slot's memory
    cgroup counts a tmpfs's pages."""
    r = run("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print('unshare', libc.unshare(0x10000000 | 0x00020000), ctypes.get_errno())
        """)
    assert r.passed
    if _run_as[0] == "nobody" or not CGROUPS:
        assert r.output.split()[:2] == ["unshare", "-1"], r.output
