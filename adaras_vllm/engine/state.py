"""Per-token steering inputs for one forward pass, in static buffers.

The compiled graph (and any CUDA graph captured from it) reads ``delta`` by reference, so
every buffer is allocated once and only ever mutated in place. Once per step, before the
forward, the host writes per-request values (alpha, map id, prompt length); the device
derives each token's alpha and map id from the batch's own request boundaries and
positions (vectorised, no Python loop over tokens, no host sync), and one gather + one
multiply turn them into every steered layer's per-token delta. Invariant: rows past the
current step's tokens are zero, so padded tokens and ``_dummy_run`` are never steered.
"""

from __future__ import annotations

import numpy as np
import torch

from .host_rows import HostRows
from .token_rows import TokenRequestIndex


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
    """Static buffers: per-request values the host writes, per-token values the device
    derives, and the deltas a steered model reads.

    ``table`` is ``[num_maps, U]`` (all steered layers' columns side by side); ``delta`` is
    ``[max_tokens, U]`` in the activation dtype. The host writes only per-request rows
    (alpha, map id, prompt length); each token's request comes from the batch's own
    ``query_start_loc`` and its position from the batch's own ``positions``, on the
    device, so no host-side token layout can disagree with what the forward runs.
    """

    def __init__(
        self,
        max_tokens: int,
        device: torch.device | str,
        table: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        max_reqs: int | None = None,
    ) -> None:
        device = torch.device(device)
        self.max_tokens = max_tokens
        self.max_reqs = max_tokens if max_reqs is None else max_reqs
        self.table = table.to(device=device, dtype=torch.float32)
        width = int(table.shape[1])
        self.alpha = torch.zeros(max_tokens, dtype=torch.float32, device=device)
        self.map_id = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.delta = torch.zeros(max_tokens, width, dtype=dtype, device=device)
        self._gathered = torch.zeros(max_tokens, width, dtype=torch.float32, device=device)
        self._rows = TokenRequestIndex(max_tokens, self.max_reqs, device)
        self._first_steered = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._last_steered = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._steered = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self._not_after = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        # Per request row, plus one zero row for tokens past the last request (padding).
        rows = self.max_reqs + 1
        self.req_alpha = torch.zeros(rows, dtype=torch.float32, device=device)
        self.req_map_id = torch.zeros(rows, dtype=torch.int64, device=device)
        self.req_first_steered = torch.zeros(rows, dtype=torch.int64, device=device)
        self.req_last_steered = torch.zeros(rows, dtype=torch.int64, device=device)
        self._host_rows = HostRows({"alpha": self.req_alpha, "map_id": self.req_map_id,
                                    "first_steered": self.req_first_steered,
                                    "last_steered": self.req_last_steered})
        self._dirty = 0  # leading token rows that may be non-zero
        self.steered_layers: list[int] = []  # set by install_steering, for logs

    def fill_requests(
        self,
        req_alpha: np.ndarray,
        req_map_id: np.ndarray,
        prompt_len: np.ndarray,
        query_start_loc: torch.Tensor,
        positions: torch.Tensor,
        alpha_factor: torch.Tensor | None = None,
        first_steered: np.ndarray | None = None,
        last_steered: np.ndarray | None = None,
    ) -> None:
        """One step: per-request rows from the host; per-token alpha and map id, and the
        deltas, derived on the device from the batch's ``query_start_loc`` (``[R + 1]``)
        and ``positions`` (``[T]``, the tokens this step runs, unpadded).
        ``alpha_factor`` (``[R]`` on the device): the gate's decision per request row.
        ``first_steered`` / ``last_steered`` (``[R]``): each request's steered positions
        (``steer_positions``; default ``prompt_len - 1`` and no end, ``last`` -1 meaning
        none)."""
        num_reqs = int(req_alpha.shape[0])
        total = int(positions.shape[0])
        if total > self.max_tokens or num_reqs > self.max_reqs:
            raise RuntimeError(
                f"adaras: step has {total} tokens but the steering buffers hold "
                f"{self.max_tokens} ({num_reqs} requests, room for {self.max_reqs}); raise "
                "the buffer size to max_num_batched_tokens"
            )
        if not np.any(req_alpha):
            self.clear()
            return
        host = self._host_rows
        host.wait()
        host.np["alpha"][:num_reqs] = req_alpha
        host.np["map_id"][:num_reqs] = req_map_id
        host.np["first_steered"][:num_reqs] = (
            prompt_len.astype(np.int64, copy=False) - 1 if first_steered is None
            else first_steered)
        last = host.np["last_steered"]
        last[:num_reqs] = -1 if last_steered is None else last_steered
        np.putmask(last[:num_reqs], last[:num_reqs] < 0, np.iinfo(np.int64).max)
        host.np["alpha"][num_reqs] = 0.0  # tokens past the last request: never steered
        host.publish(num_reqs + 1)
        if alpha_factor is not None:
            self.req_alpha[:num_reqs].mul_(alpha_factor)
        req = self._rows.build(query_start_loc, num_reqs, total)
        torch.index_select(self.req_first_steered, 0, req, out=self._first_steered[:total])
        torch.ge(positions, self._first_steered[:total], out=self._steered[:total])
        torch.index_select(self.req_last_steered, 0, req, out=self._last_steered[:total])
        torch.le(positions, self._last_steered[:total], out=self._not_after[:total])
        self._steered[:total].logical_and_(self._not_after[:total])
        torch.index_select(self.req_alpha, 0, req, out=self.alpha[:total])
        self.alpha[:total].mul_(self._steered[:total])
        torch.index_select(self.req_map_id, 0, req, out=self.map_id[:total])
        used = max(total, self._dirty)
        self.alpha[total:used].zero_()
        self.map_id[total:used].zero_()
        self._publish(used)
        self._dirty = total

    def fill_tokens(self, alpha: float, map_id: int, n: int) -> None:
        """Steer the first ``n`` token rows with one map and alpha, whatever their
        positions (the start-up self-test's dummy runs have no requests)."""
        self.alpha[:n].fill_(alpha)
        self.map_id[:n].fill_(map_id)
        used = max(n, self._dirty)
        self.alpha[n:used].zero_()
        self.map_id[n:used].zero_()
        self._publish(used)
        self._dirty = n

    def clear(self) -> None:
        """Zero whatever the last fill wrote (a no-op when already zero)."""
        if self._dirty == 0:
            return
        used = self._dirty
        self.alpha[:used].zero_()
        self.map_id[:used].zero_()
        self._publish(used)
        self._dirty = 0

    def _publish(self, n: int) -> None:
        """Recompute rows ``[0, n)`` of the deltas in place from per-token alpha/map id."""
        torch.index_select(self.table, 0, self.map_id[:n], out=self._gathered[:n])
        torch.mul(self._gathered[:n], self.alpha[:n, None], out=self.delta[:n])
