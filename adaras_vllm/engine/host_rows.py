"""Per-request rows the host writes each step and the device reads: one mirror for all.

Steering, the gate and capture each keep a few ``[rows]`` device tensors of per-request
values. On the CPU the host writes them directly. On a GPU it writes pinned host copies
and copies the used rows over asynchronously; the host must not rewrite its copies until
the last copy has run (with async scheduling the CPU can be a step ahead), so ``wait``
blocks on that copy only, never on the forward.
"""

from __future__ import annotations

import numpy as np
import torch


class HostRows:
    """Host-writable numpy views of named device row tensors, and their publication."""

    def __init__(self, device_rows: dict[str, torch.Tensor]) -> None:
        self.device_rows = device_rows
        first = next(iter(device_rows.values()))
        self.on_host = first.device.type == "cpu"
        if self.on_host:
            host = device_rows
        else:
            pin = torch.cuda.is_available()
            host = {name: torch.zeros_like(t, device="cpu").pin_memory() if pin
                    else torch.zeros_like(t, device="cpu") for name, t in device_rows.items()}
        self._host = host
        self.np: dict[str, np.ndarray] = {name: t.numpy() for name, t in host.items()}
        self._copied = torch.cuda.Event() if first.device.type == "cuda" else None

    def wait(self) -> None:
        """Before rewriting the host rows: the previous step's copy has run."""
        if self._copied is not None:
            self._copied.synchronize()

    def publish(self, n: int) -> None:
        """Make rows ``[0, n)`` visible on the device (asynchronously on a GPU)."""
        if self.on_host:
            return
        for name, dev in self.device_rows.items():
            dev[:n].copy_(self._host[name][:n], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
