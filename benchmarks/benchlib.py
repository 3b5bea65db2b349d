"""Shared helpers of the benchmarks: pinning the comparison side to the cores vLLM's CPU
worker uses, reading which cores that worker is bound to, paired (alternated) statistics,
a plain-text table and the run's environment for the JSON output.

Imported by the scripts in this folder as ``benchlib`` (``python benchmarks/X.py`` puts
this folder first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def default_worker_core() -> int:
    """The core vLLM's CPU worker binds to with ``VLLM_CPU_OMP_THREADS_BIND=auto`` and one
    worker: the first allowed core (the last one is reserved for the engine core and the
    front end). Checked against the running worker by ``vllm_worker_affinity``."""
    return allowed_cores()[0]


@contextlib.contextmanager
def pinned(core: int | None, threads: int = 1) -> Iterator[dict[str, Any]]:
    """Run the block on one core with ``threads`` torch threads; restore both afterwards.

    ``os.sched_setaffinity(0, ...)`` pins the calling thread only; with one torch thread
    the calling thread does all the compute. Start engines *outside* this block: processes
    spawned from a pinned thread would inherit its single core.
    """
    import torch

    old_aff = os.sched_getaffinity(0)
    old_threads = torch.get_num_threads()
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})
        torch.set_num_threads(threads)
        yield {"torch_threads": torch.get_num_threads(),
               "affinity": sorted(os.sched_getaffinity(0))}
    finally:
        torch.set_num_threads(old_threads)
        os.sched_setaffinity(0, old_aff)


def _allowed_list(status_path: Path) -> str:
    for line in status_path.read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


def vllm_worker_affinity() -> list[dict[str, Any]]:
    """For every vLLM process under this one: its name and the cores its threads may run
    on (OpenMP binds the worker's compute threads, not the process), with thread counts."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
            if "VLLM" not in name and "vllm" not in " ".join(proc.cmdline()[:3]):
                continue
            per_thread: dict[str, int] = {}
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                try:
                    cores = _allowed_list(task / "status")
                except OSError:
                    continue
                per_thread[cores] = per_thread.get(cores, 0) + 1
            out.append({"pid": proc.pid, "name": name, "threads_by_cores": per_thread})
        except (psutil.Error, OSError):
            continue
    return out


def worker_cores(affinity: list[dict[str, Any]]) -> list[int] | None:
    """Cores the worker's compute threads are bound to (the most common thread binding
    of the process named ``VLLM::Worker``, else of any vLLM child)."""
    workers = [a for a in affinity if "Worker" in a["name"]] or affinity
    for a in workers:
        if a["threads_by_cores"]:
            cores = max(a["threads_by_cores"].items(), key=lambda kv: kv[1])[0]
            try:
                return sorted(parse_id_list(cores))
            except Exception:  # noqa: BLE001 - only informative
                return None
    return None


def parse_id_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (the kernel's Cpus_allowed_list format)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Medians of two alternated series and the median of their per-pair ratio a/b, with
    its interquartile range (the spread tells how noisy the run was)."""
    ratios = sorted(x / y for x, y in zip(a, b) if y > 0)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {
        "median_a": statistics.median(a),
        "median_b": statistics.median(b),
        "median_ratio": statistics.median(ratios),
        "ratio_q1": q[0],
        "ratio_q3": q[2],
        "pairs": len(ratios),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "allowed_cores": allowed_cores(),
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import vllm

        info["vllm"] = vllm.__version__
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info
