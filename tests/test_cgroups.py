"""Each sandbox slot's cgroup limits, on cgroup v1 and v2 hosts, and the fallback to none.

The trees here are fake: plain directories and files under tmp_path, shaped like
/sys/fs/cgroup. A real cgroupfs makes interface files on mkdir and a fake one does not, so
what the code writes shows up as files and what it must find is written by the test.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adaras_vllm.coding.cgroups import SlotCgroups, slot_cgroups

MEMORY = 256 << 20
PROCESSES = 10
OWN = "/system.slice/grader.service"


def _honours_modes(path: Path) -> bool:
    """Writability as an unprivileged owner sees it. The suite often runs as root, where
    os.access (the default check) says yes whatever the mode, so a chmod alone would test
    nothing; this check reads the owner's write bit instead."""
    return bool(path.exists() and path.stat().st_mode & stat.S_IWUSR)


def _v2_tree(tmp_path: Path, *, controllers: str = "cpuset cpu io memory pids",
             subtree: str = "") -> tuple[Path, Path, Path]:
    """A unified hierarchy with our process in OWN; returns (root, base, self_cgroup)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    base = root / OWN.lstrip("/")
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers + "\n")
    (base / "cgroup.subtree_control").write_text(subtree + "\n")
    (base / "cgroup.procs").write_text(f"{os.getpid()}\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(f"0::{OWN}\n")
    return root, base, self_cgroup


def _v2(root: Path, self_cgroup: Path, slot: int = 3, **kw: object) -> SlotCgroups:
    return slot_cgroups(slot, total_memory_bytes=MEMORY, processes=PROCESSES, root=root,
                        self_cgroup=self_cgroup, **kw)


def _v1_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpu"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("1\n")
    return root


def _v1(root: Path, euid: int, slot: int = 3) -> SlotCgroups:
    return slot_cgroups(slot, total_memory_bytes=MEMORY, processes=PROCESSES, root=root,
                        self_cgroup=root / "absent", euid=euid)


# cgroup v2


def test_v2_slot_lives_in_adaras_sandbox_under_our_own_cgroup(tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    cgroups = _v2(root, self_cgroup, slot=3)
    assert cgroups == SlotCgroups("v2", (str(base / "adaras-sandbox/slot-3/cgroup.procs"),))


def test_v2_slot_gets_memory_max_no_swap_and_pids_for_launcher_and_runner(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    _v2(root, self_cgroup, slot=3)
    group = base / "adaras-sandbox/slot-3"
    written = {p.name: p.read_text() for p in group.iterdir()}
    assert written == {"memory.max": str(MEMORY), "memory.swap.max": "0",
                       "pids.max": str(PROCESSES + 2)}


def test_v2_sandbox_parent_hands_memory_and_pids_to_its_slots(tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path, subtree="memory pids")
    _v2(root, self_cgroup)
    assert (base / "adaras-sandbox/cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_moves_our_process_into_a_leaf_before_enabling_controllers_on_the_base(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path, subtree="cpu")
    _v2(root, self_cgroup)
    assert (base / "adaras-grader/cgroup.procs").read_text() == str(os.getpid())
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_leaves_our_process_alone_when_the_base_already_delegates_the_controllers(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path, subtree="cpu memory pids")
    assert _v2(root, self_cgroup).kind == "v2"
    assert not (base / "adaras-grader").exists()
    assert (base / "cgroup.subtree_control").read_text() == "cpu memory pids\n"


def test_v2_a_later_call_from_inside_the_grader_leaf_keeps_the_same_base(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    first = _v2(root, self_cgroup)
    # What the kernel would now show: we live in the leaf, the base delegates both.
    self_cgroup.write_text(f"0::{OWN}/adaras-grader\n")
    (base / "cgroup.subtree_control").write_text("memory pids\n")
    (base / "adaras-grader/cgroup.controllers").write_text("memory pids\n")
    assert _v2(root, self_cgroup) == first
    assert not (base / "adaras-grader/adaras-grader").exists()


@pytest.mark.parametrize("controllers", ["cpu io pids", "cpu io memory", ""])
def test_v2_is_unusable_when_memory_or_pids_is_not_ours_to_delegate(
        tmp_path: Path, controllers: str) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path, controllers=controllers)
    assert _v2(root, self_cgroup) == SlotCgroups("none", ())
    assert not (base / "adaras-sandbox").exists()


def test_v2_is_unusable_when_our_cgroup_directory_is_not_writable(tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    base.chmod(0o555)
    try:
        assert _v2(root, self_cgroup, writable=_honours_modes).kind == "none"
    finally:
        base.chmod(0o755)
    assert not (base / "adaras-sandbox").exists()


def test_v2_is_unusable_when_our_subtree_control_is_not_writable(tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    (base / "cgroup.subtree_control").chmod(0o444)
    assert _v2(root, self_cgroup, writable=_honours_modes).kind == "none"
    assert not (base / "adaras-grader").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode says")
def test_v2_default_check_refuses_a_read_only_cgroup_to_an_unprivileged_user(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    base.chmod(0o555)
    try:
        assert _v2(root, self_cgroup).kind == "none"
    finally:
        base.chmod(0o755)


@pytest.mark.parametrize("content", ["garbage\n", "", "0::relative/path\n",
                                     "4:memory:/only-v1\n", None])
def test_v2_gives_none_for_an_unreadable_or_garbage_proc_self_cgroup(
        tmp_path: Path, content: str | None) -> None:
    root, _, self_cgroup = _v2_tree(tmp_path)
    if content is None:
        self_cgroup.unlink()
    else:
        self_cgroup.write_text(content)
    assert _v2(root, self_cgroup) == SlotCgroups("none", ())


def test_v2_refuses_a_cgroup_above_the_mounted_hierarchy(tmp_path: Path) -> None:
    # A cgroup namespace shows "/.." for groups above its root; one that resolved to a
    # usable-looking directory outside the mount must still not be used.
    root, _, self_cgroup = _v2_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, content in [("cgroup.controllers", "memory pids"),
                          ("cgroup.subtree_control", "memory pids"), ("cgroup.procs", "")]:
        (outside / name).write_text(content)
    self_cgroup.write_text("0::/../outside\n")
    assert _v2(root, self_cgroup).kind == "none"
    assert not (outside / "adaras-sandbox").exists()


def test_v2_gives_none_instead_of_raising_when_a_limit_cannot_be_written(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    (base / "adaras-sandbox/slot-3/memory.max").mkdir(parents=True)  # open() fails on it
    assert _v2(root, self_cgroup, slot=3).kind == "none"


def test_v2_memory_failures_count_the_limits_oom_kills(tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    cgroups = _v2(root, self_cgroup, slot=3)
    (base / "adaras-sandbox/slot-3/memory.events").write_text(
        "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert cgroups.memory_failures() == 2


def test_v2_memory_failures_ignore_reclaim_at_the_limit_that_killed_nothing(
        tmp_path: Path) -> None:
    root, base, self_cgroup = _v2_tree(tmp_path)
    cgroups = _v2(root, self_cgroup, slot=3)
    (base / "adaras-sandbox/slot-3/memory.events").write_text(
        "low 0\nhigh 0\nmax 40\noom 0\noom_kill 0\n")
    assert cgroups.memory_failures() == 0


def test_v2_memory_failures_are_zero_before_the_events_file_exists(tmp_path: Path) -> None:
    root, _, self_cgroup = _v2_tree(tmp_path)
    assert _v2(root, self_cgroup).memory_failures() == 0


# cgroup v1 and hosts without either


def test_v1_as_root_gives_a_memory_then_a_pids_group_with_their_limits(
        tmp_path: Path) -> None:
    root = _v1_tree(tmp_path)
    cgroups = _v1(root, euid=0, slot=3)
    memory, pids = root / "memory/adaras-sandbox/slot-3", root / "pids/adaras-sandbox/slot-3"
    assert cgroups == SlotCgroups("v1", (str(memory / "cgroup.procs"),
                                         str(pids / "cgroup.procs")))
    assert (memory / "memory.limit_in_bytes").read_text() == str(MEMORY)
    assert (pids / "pids.max").read_text() == str(PROCESSES + 2)


def test_v1_memory_failures_read_the_memory_groups_failcnt(tmp_path: Path) -> None:
    root = _v1_tree(tmp_path)
    cgroups = _v1(root, euid=0, slot=3)
    (root / "memory/adaras-sandbox/slot-3/memory.failcnt").write_text("5\n")
    assert cgroups.memory_failures() == 5


def test_v1_as_non_root_gives_none_and_creates_nothing(tmp_path: Path) -> None:
    root = _v1_tree(tmp_path)
    assert _v1(root, euid=1000) == SlotCgroups("none", ())
    assert not (root / "memory/adaras-sandbox").exists()


def test_a_hybrid_host_with_a_controllerless_unified_mount_is_v1(tmp_path: Path) -> None:
    root = _v1_tree(tmp_path)
    (root / "unified").mkdir()
    (root / "unified/cgroup.controllers").write_text("")
    (root / "unified/cgroup.procs").write_text("1\n")
    assert _v1(root, euid=0).kind == "v1"


def test_a_host_without_memory_and_pids_hierarchies_gives_none(tmp_path: Path) -> None:
    (tmp_path / "cgroup/cpu").mkdir(parents=True)
    (tmp_path / "cgroup/cpu/cgroup.procs").write_text("1\n")
    assert _v1(tmp_path / "cgroup", euid=0) == SlotCgroups("none", ())


def test_no_cgroups_means_no_memory_failures() -> None:
    assert SlotCgroups("none", ()).memory_failures() == 0


REAL = Path("/sys/fs/cgroup")
V1_HOST = (not (REAL / "cgroup.controllers").exists()
           and (REAL / "memory/cgroup.procs").is_file() and (REAL / "pids/cgroup.procs").is_file())


@pytest.mark.skipif(not V1_HOST, reason="this host has no cgroup v1 memory and pids "
                    "hierarchies (a v2 host would move this test process into a leaf)")
def test_this_v1_host_gives_v1_as_root_and_none_otherwise() -> None:
    slot = 90000 + os.getpid() % 10000  # far from the sandbox's slots, which may be busy
    cgroups = slot_cgroups(slot, total_memory_bytes=MEMORY, processes=PROCESSES)
    try:
        assert cgroups.kind == ("v1" if os.geteuid() == 0 else "none")
        assert cgroups.memory_failures() == 0
    finally:
        for procs in cgroups.procs:
            os.rmdir(Path(procs).parent)
