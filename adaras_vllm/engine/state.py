"""Per-token steering inputs for one forward pass, in static buffers.

The compiled graph (and any CUDA graph captured from it) reads ``delta`` by reference, so
every buffer is allocated once and only ever mutated in place. Once per step, before the
forward, the batch layout gives each token an alpha and a map id (vectorised, no Python
loop over tokens), and one gather + one multiply turn them into every steered layer's
per-token delta. Invariant: rows past the current step's tokens are zero, so padded
tokens and ``_dummy_run`` are never steered.
"""

from __future__ import annotations

import numpy as np
import torch


def steered_token_alpha(
    req_alpha: np.ndarray,
    num_scheduled: np.ndarray,
    num_computed: np.ndarray,
    prompt_len: np.ndarray,
) -> np.ndarray:
    """Alpha of each scheduled token, request rows laid out back to back.

    Position ``t`` of a request with prompt length ``P`` is steered iff ``t >= P - 1``:
    the last prompt token and every generated one, as the paper's forward-pre-hook on
    ``down_proj`` does under ``generate`` with a KV cache. Positions come from the
    number of already computed tokens, so chunked prefill, prefix-cache hits and
    recompute after preemption all land on the same positions.
    """
    num_scheduled = num_scheduled.astype(np.int64, copy=False)
    total = int(num_scheduled.sum())
    starts = np.cumsum(num_scheduled) - num_scheduled
    offset_in_req = np.arange(total, dtype=np.int64) - np.repeat(starts, num_scheduled)
    positions = np.repeat(num_computed.astype(np.int64, copy=False), num_scheduled) + offset_in_req
    first_steered = np.repeat(prompt_len.astype(np.int64, copy=False) - 1, num_scheduled)
    alpha = np.repeat(req_alpha.astype(np.float32, copy=False), num_scheduled)
    return np.where(positions >= first_steered, alpha, np.float32(0.0))


class SteeringState:
    """Static per-token buffers: ``alpha``, ``map_id`` and the deltas a steered model reads.

    ``table`` is ``[num_maps, U]`` (all steered layers' columns side by side); ``delta`` is
    ``[max_tokens, U]`` in the activation dtype.
    """

    def __init__(
        self,
        max_tokens: int,
        device: torch.device | str,
        table: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        device = torch.device(device)
        self.max_tokens = max_tokens
        self.table = table.to(device=device, dtype=torch.float32)
        width = int(table.shape[1])
        self.alpha = torch.zeros(max_tokens, dtype=torch.float32, device=device)
        self.map_id = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.delta = torch.zeros(max_tokens, width, dtype=dtype, device=device)
        self._gathered = torch.zeros(max_tokens, width, dtype=torch.float32, device=device)
        self._on_host = device.type == "cpu"
        if self._on_host:
            self._alpha_host, self._map_host = self.alpha, self.map_id
        else:
            pin = torch.cuda.is_available()
            self._alpha_host = torch.zeros(max_tokens, dtype=torch.float32, pin_memory=pin)
            self._map_host = torch.zeros(max_tokens, dtype=torch.int64, pin_memory=pin)
        # The host->device copy is asynchronous: the host rows must not be rewritten
        # until the previous step's copy has run (with async scheduling the CPU can be
        # a step ahead). Waits only for that copy, not for the forward.
        self._copied = torch.cuda.Event() if device.type == "cuda" else None
        self._alpha_np = self._alpha_host.numpy()
        self._map_np = self._map_host.numpy()
        self._dirty = 0  # leading rows that may be non-zero
        self.steered_layers: list[int] = []  # set by install_steering, for logs

    def fill(
        self,
        req_alpha: np.ndarray,
        req_map_id: np.ndarray,
        num_scheduled: np.ndarray,
        num_computed: np.ndarray,
        prompt_len: np.ndarray,
    ) -> None:
        """Lay out one step's per-token alpha/map id and deltas (arrays are per batch row)."""
        total = int(num_scheduled.sum())
        if total > self.max_tokens:
            raise RuntimeError(
                f"adaras: step has {total} tokens but the steering buffers hold "
                f"{self.max_tokens}; raise the buffer size to max_num_batched_tokens"
            )
        if not np.any(req_alpha):
            self.clear()
            return
        alpha_tok = steered_token_alpha(req_alpha, num_scheduled, num_computed, prompt_len)
        self._wait_for_last_copy()
        used = max(total, self._dirty)
        self._alpha_np[:total] = alpha_tok
        self._alpha_np[total:used] = 0.0
        self._map_np[:total] = np.repeat(req_map_id.astype(np.int64, copy=False), num_scheduled)
        self._map_np[total:used] = 0
        self._publish(used)
        self._dirty = total

    def clear(self) -> None:
        """Zero whatever the last fill wrote (a no-op when already zero)."""
        if self._dirty == 0:
            return
        used = self._dirty
        self._wait_for_last_copy()
        self._alpha_np[:used] = 0.0
        self._map_np[:used] = 0
        self._publish(used)
        self._dirty = 0

    def _wait_for_last_copy(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()

    def _publish(self, n: int) -> None:
        """Move rows ``[0, n)`` to the device and recompute their deltas in place."""
        if not self._on_host:
            self.alpha[:n].copy_(self._alpha_host[:n], non_blocking=True)
            self.map_id[:n].copy_(self._map_host[:n], non_blocking=True)
            if self._copied is not None:
                self._copied.record()
        torch.index_select(self.table, 0, self.map_id[:n], out=self._gathered[:n])
        torch.mul(self._gathered[:n], self.alpha[:n, None], out=self.delta[:n])
