"""Running the grader as an ordinary user (``nobody``) from tests that run as root.

The sandbox, its launcher and its runner are stdlib only, so a copy of those files that
``nobody`` can read, run by Debian's /usr/bin/python3 (readable by every user, unlike this
machine's pyenv under /root), is the whole grader.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
NOBODY = 65534
DEBIAN_PYTHON = Path("/usr/bin/python3")
CAN_RUN_AS_NOBODY = os.geteuid() == 0 and DEBIAN_PYTHON.is_file()
SKIP_REASON = "needs root (to start the grader as nobody) and /usr/bin/python3"
#: What the grader imports: the package root's stdlib-only modules and coding/.
_FILES = ("__init__.py", "arg_types.py", "jsonl.py", "responses.py", "coding/*.py")


def readable_copy(root: Path, extra: dict[str, Path] | None = None) -> Path:
    """The grader's files (and ``extra``: name -> file) under ``root``, readable by nobody."""
    for pattern in _FILES:
        for source in (PROJECT / "adaras_vllm").glob(pattern):
            target = root / "adaras_vllm" / source.relative_to(PROJECT / "adaras_vllm")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    for name, source in (extra or {}).items():
        (root / name).write_bytes(source.read_bytes())
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in root.parents:  # pytest's base temp directory is private to root
        if str(parent).startswith(tempfile.gettempdir() + os.sep):
            parent.chmod(parent.stat().st_mode | 0o755)
    return root


def as_nobody() -> dict:
    """``subprocess.run`` keywords that start a process as nobody, with no groups."""
    return {"user": NOBODY, "group": NOBODY, "extra_groups": [], "cwd": "/tmp"}
