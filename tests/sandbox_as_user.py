"""Run sandbox jobs as whoever starts this script (the tests start it as ``nobody`` with
Debian's /usr/bin/python3): stdlib only, like the sandbox itself.

stdin: a JSON list of ``{"candidate", "tests", "entry_point", "limits", "slot", "isolate",
"setup", "allow_unisolated"}``; stdout: one JSON list of results (an ``ExecResult``'s
fields, or ``{"unavailable": message}``). ``--block-namespaces`` first installs a seccomp
filter that makes ``unshare`` fail with EPERM for this process and everything it starts:
a machine whose kernel refuses namespaces to this user.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import sys

UNSHARE = {"x86_64": 272, "aarch64": 97}


def block_unshare() -> None:
    """seccomp: ``unshare`` returns EPERM, every other system call is allowed."""
    import os

    number = UNSHARE[os.uname().machine]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    load_nr = (0x20, 0, 0, 0)  # BPF_LD | BPF_W | BPF_ABS, offset 0: the syscall number
    is_unshare = (0x15, 0, 1, number)  # BPF_JMP | BPF_JEQ | BPF_K
    deny = (0x06, 0, 0, 0x00050000 | 1)  # SECCOMP_RET_ERRNO | EPERM
    allow = (0x06, 0, 0, 0x7FFF0000)  # SECCOMP_RET_ALLOW
    insns = (Filter * 4)(*(Filter(*i) for i in (load_nr, is_unshare, deny, allow)))
    program = Program(4, insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(SECCOMP)")


def main() -> int:
    if "--block-namespaces" in sys.argv:
        block_unshare()
    from adaras_vllm.coding.sandbox import SandboxLimits, SandboxUnavailable, run_candidate

    out = []
    for job in json.load(sys.stdin):
        try:
            result = run_candidate(
                job["candidate"], job["tests"], job.get("entry_point"),
                SandboxLimits(**job.get("limits", {})), slot=job.get("slot", 0),
                isolate=job.get("isolate"), setup=job.get("setup", ""),
                allow_unisolated=job.get("allow_unisolated", False))
            out.append(dataclasses.asdict(result))
        except SandboxUnavailable as e:
            out.append({"unavailable": str(e)})
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
