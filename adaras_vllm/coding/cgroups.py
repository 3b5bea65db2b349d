"""Per-slot cgroups for the code sandbox, on cgroup v1 and cgroup v2 hosts.

A candidate's memory is more than its own heap: shared memory, tmpfs files and page cache
escape RLIMIT_AS, and fork bombs escape RLIMIT_NPROC across uids. Only a cgroup counts all
of them, so each sandbox slot gets one with a memory and a pids limit. Where none can be
made the sandbox still runs (with rlimits only) and says so: this module never raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SANDBOX = "adaras-sandbox"  # the parent of every slot's cgroup
GRADER = "adaras-grader"  # v2 leaf our own process moves into (no-internal-processes rule)
_CONTROLLERS = ("memory", "pids")
_ENABLE = "+memory +pids"
# Processes beyond the candidate's own: the launcher and the runner that joins the group.
_EXTRA_PROCESSES = 2


@dataclass(frozen=True)
class SlotCgroups:
    """One slot's cgroups: the `cgroup.procs` files a launcher joins by writing "0".

    `kind` is "v1" (procs: memory group first, then pids group), "v2" (one unified group)
    or "none" (no cgroup could be made; procs is empty).
    """

    kind: str
    procs: tuple[str, ...] = ()

    def memory_failures(self) -> int:
        """How often the slot's memory limit struck so far (0 without a memory cgroup).

        The sandbox compares this before and after a run to explain a kill as "at the
        memory limit", so it must count kills by the limit, not mere brushes with it:
        - v1: `memory.failcnt`, the only counter v1 has (charges refused at the limit).
        - v2: `oom_kill` from `memory.events`, the processes the cgroup's OOM killer
          killed. Not `max`: that also counts every time reclaim of page cache (files a
          candidate wrote) kept usage under the limit, which would blame the limit for
          kills it did not cause. A v2 group with no `oom_kill` line counts 0.
        """
        if not self.procs or self.kind not in ("v1", "v2"):
            return 0
        group = Path(self.procs[0]).parent
        try:
            if self.kind == "v1":
                return int((group / "memory.failcnt").read_text())
            return _events(group / "memory.events").get("oom_kill", 0)
        except (OSError, ValueError):
            return 0


NONE = SlotCgroups("none", ())


def _writable(path: Path) -> bool:
    """Whether this process may write `path` (cgroup delegation is by file ownership)."""
    return os.access(path, os.W_OK)


def slot_cgroups(slot: int, *, total_memory_bytes: int, processes: int,
                 root: Path = Path("/sys/fs/cgroup"),
                 self_cgroup: Path = Path("/proc/self/cgroup"),
                 euid: int | None = None,
                 writable: Callable[[Path], bool] = _writable) -> SlotCgroups:
    """Slot `slot`'s cgroups, created with their limits written; kind "none" where the
    host's hierarchy cannot give us any (never raises: the sandbox reports the downgrade).

    `root`, `self_cgroup`, `euid` and `writable` exist so tests can point this at a fake
    tree; the sandbox passes only the limits.
    """
    pids_max = processes + _EXTRA_PROCESSES
    try:
        if (root / "cgroup.controllers").is_file():
            return _v2(slot, total_memory_bytes, pids_max, root, self_cgroup, writable)
        # Hybrid hosts (v1 controllers plus a controller-less `unified/`) land here too.
        if all((root / c / "cgroup.procs").is_file() for c in _CONTROLLERS):
            uid = os.geteuid() if euid is None else euid
            return _v1(slot, total_memory_bytes, pids_max, root) if uid == 0 else NONE
    except (OSError, ValueError):
        pass
    return NONE


def _v1(slot: int, memory: int, pids_max: int, root: Path) -> SlotCgroups:
    """cgroup v1: one group per controller, `<root>/<controller>/adaras-sandbox/slot-N`.

    Only root may make these (v1 has no safe delegation), so callers check the euid.
    """
    settings = {"memory": {"memory.limit_in_bytes": str(memory)},
                "pids": {"pids.max": str(pids_max)}}
    procs = []
    for controller, values in settings.items():
        group = root / controller / SANDBOX / f"slot-{slot}"
        group.mkdir(parents=True, exist_ok=True)
        for name, value in values.items():
            _write(group / name, value)
        procs.append(str(group / "cgroup.procs"))
    return SlotCgroups("v1", tuple(procs))


def _v2(slot: int, memory: int, pids_max: int, root: Path, self_cgroup: Path,
        writable: Callable[[Path], bool]) -> SlotCgroups:
    """cgroup v2: `<base>/adaras-sandbox/slot-N`, where base is the cgroup we were started
    in (the one delegated to us: a container's, or a systemd unit's with Delegate=yes)."""
    base = _own_cgroup(root, self_cgroup)
    if base is None:
        return NONE
    if base.name == GRADER and base != root:  # moved into our leaf by an earlier call
        base = base.parent
    if not set(_CONTROLLERS) <= _words(base / "cgroup.controllers"):
        return NONE
    needed = (base, base / "cgroup.subtree_control", base / "cgroup.procs")
    if not all(writable(path) for path in needed):
        return NONE
    if not set(_CONTROLLERS) <= _words(base / "cgroup.subtree_control"):
        # "No internal processes": a cgroup that holds processes (ours) cannot hand
        # controllers to its children. Move ourselves into a leaf first; children we fork
        # later start there, and the launcher leaves it for its slot.
        leaf = base / GRADER
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(base / "cgroup.subtree_control", _ENABLE)
    sandbox = base / SANDBOX
    sandbox.mkdir(exist_ok=True)
    _write(sandbox / "cgroup.subtree_control", _ENABLE)
    group = sandbox / f"slot-{slot}"
    group.mkdir(exist_ok=True)
    _write(group / "memory.max", str(memory))
    _write_swap_off(group)
    _write(group / "pids.max", str(pids_max))
    return SlotCgroups("v2", (str(group / "cgroup.procs"),))


def _own_cgroup(root: Path, self_cgroup: Path) -> Path | None:
    """Our unified-hierarchy cgroup (the `0::/path` line), as a directory under `root`;
    None when the file has no such line or names a path outside `root` (a cgroup
    namespace shows `/..` for groups above its own root)."""
    for line in self_cgroup.read_text().splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            parts = Path(path).parts
            if not path.startswith("/") or ".." in parts:
                return None
            return root.joinpath(*parts[1:])
    return None


def _write_swap_off(group: Path) -> None:
    """Keep the slot out of swap, so memory.max bounds what it really holds.

    Kernels without swap accounting have no `memory.swap.max`; there the memory limit
    alone still applies, which beats no cgroup at all, so that one failure is tolerated.
    """
    try:
        _write(group / "memory.swap.max", "0")
    except OSError:
        if (group / "memory.swap.max").exists():
            raise


def _write(path: Path, value: str) -> None:
    """One cgroup interface write (opening for writing also creates files in a fake tree)."""
    with open(path, "w") as f:
        f.write(value)


def _words(path: Path) -> set[str]:
    return set(path.read_text().split())


def _events(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as a dict."""
    events = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            events[fields[0]] = int(fields[1])
    return events
