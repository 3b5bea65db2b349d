"""The correctness gate inside the engine: ``steer_mode: "adaptive"``.

The gate's score is computed from the request's own prefill, in the same forward passes
that serve it: no second model, no extra pass over the prompt.

Inside the forward, every layer that holds gate features copies its ``down_proj`` input
at those features into one static ``[tokens, K]`` buffer (all gated maps' features side
by side). After the last such layer, each token's scorer value
``s_t = tanh(v_m . x_t + b_m)`` (``m``: its request's map) is computed and, for prompt
positions ``0 .. P-2`` of undecided adaptive requests, ``exp(s_t) x_t`` and ``exp(s_t)``
are added into that request's slot. Because ``s_t`` lies in [-1, 1], the softmax needs no
running maximum: ``z = sum_t exp(s_t) x_t / sum_t exp(s_t)`` is exact, however the prompt
is split into chunks.

Outside the forward, once per step (before the step's forward is launched), every request
whose positions ``0 .. P-2`` are all in its slot is decided on the device:
``p_good = sigmoid(W2 relu(W1 z + b1) + b2)``, ``fired = p_good < threshold``; its alpha
is multiplied by ``fired`` from then on. The scheduler never lets an undecided adaptive
request's chunk hold position ``P-1`` together with earlier ones (``scheduler_trim``), so
the decision always exists before the first steered position runs. Results reach the API
by ``collective_rpc("adaras_gate_results")``, keyed by a tag the front end gave the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from adaras_vllm.maps import NeuronMap

from .host_rows import HostRows
from .shard import device_of, intermediate_shard, require_down_projs
from .step_layout import StepLayout
from .token_rows import TokenRequestIndex

logger = logging.getLogger("vllm.adaras")

RESULTS_METHOD = "adaras_gate_results"
#: Finished results kept per worker until fetched (oldest dropped first).
MAX_KEPT_RESULTS = 65536


@dataclass(frozen=True)
class GateResult:
    """One request's gate decision: ``p_good`` and whether steering fired."""

    p_good: float
    fired: bool
    threshold: float
    map_name: str

    def to_wire(self) -> dict[str, Any]:
        return {"p_good": self.p_good, "fired": self.fired, "threshold": self.threshold,
                "map": self.map_name}


class GatedDownProj:
    """Mixin in front of a ``down_proj``: copy this layer's gate features of its input,
    and after the last gate layer pool the step's tokens into their requests' slots."""

    #: Read the activation itself: vLLM must not hand this layer fp8/fp4 data from a
    #: fused activation+quant kernel (as it does for LoRA's down_proj).
    requires_unquantized_input = True

    adaras_gate_idx: torch.Tensor  # int64 [k_l], shard-local neuron indices
    adaras_gate_feat: torch.Tensor  # [max_tokens, k_l] activation dtype
    adaras_gate_cols: torch.Tensor  # [max_tokens, k_l] f32 view into the shared features
    adaras_gate_pool: Any  # the GateState, on the last gate layer only (else None)

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        torch.index_select(x, 1, self.adaras_gate_idx, out=self.adaras_gate_feat[:n])
        self.adaras_gate_cols[:n].copy_(self.adaras_gate_feat[:n])
        if self.adaras_gate_pool is not None:
            self.adaras_gate_pool.pool_(n)
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


class GateState:
    """Static buffers and host bookkeeping of every gated map on this rank."""

    def __init__(
        self,
        maps: Sequence[NeuronMap],
        columns: dict[int, tuple[int, int]],
        local_features: list[tuple[int, int, int]],
        *,
        max_tokens: int,
        max_slots: int,
        device: torch.device,
        tp_size: int = 1,
    ) -> None:
        """``local_features``: (map id, gate feature j, shard-local neuron) per column,
        columns grouped by layer as ``columns`` says."""
        self.maps = list(maps)
        self.gated = [i for i, m in enumerate(maps) if m.gate is not None]
        self.col_of_map = {m_id: c for c, m_id in enumerate(self.gated)}
        self.tp_size = tp_size
        self.device = device
        num_gated = len(self.gated)
        width = len(local_features)
        self.max_tokens = max_tokens
        self.max_slots = max_slots
        self.trash = max_slots
        f32 = dict(dtype=torch.float32, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        # Scorer weights per column, one column of V per gated map (0 for other maps').
        v = torch.zeros(width, num_gated)
        # Per gated map, on the device once: W1 over this rank's columns, and the rest.
        self.w1: list[torch.Tensor] = []
        self.mlp: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for c, m_id in enumerate(self.gated):
            g = maps[m_id].gate
            w1 = torch.zeros(width, g.hidden)
            for col, (owner, j, _) in enumerate(local_features):
                if owner == m_id:
                    v[col, c] = g.scorer_weight[0, j]
                    w1[col] = g.mlp0_weight[:, j]
            self.w1.append(w1.to(device))
            self.mlp.append((g.mlp0_bias.to(device), g.mlp2_weight[0].to(device),
                             g.mlp2_bias.to(device)))
        self.thresholds = torch.tensor([float(maps[m].gate.threshold) for m in self.gated]
                                       or [0.0], dtype=torch.float32, device=device)
        self.v = v.to(device)
        self.scorer_bias = torch.tensor(
            [float(maps[m].gate.scorer_bias[0]) for m in self.gated], **f32)
        self.features = torch.zeros(max_tokens, width, **f32)
        self.columns = columns
        self.scores = torch.zeros(max_tokens, max(num_gated, 1), **f32)
        self.weight = torch.zeros(max_tokens, **f32)  # exp(s_t), 0 where not pooled
        self.weighted = torch.zeros(max_tokens, width, **f32)
        self.z_sum = torch.zeros(max_slots + 1, width, **f32)
        self.w_sum = torch.zeros(max_slots + 1, **f32)
        self.p_good = torch.zeros(max_slots + 1, **f32)
        self.fired = torch.zeros(max_slots + 1, **f32)
        # Per token (device-derived each step): slot (trash if not pooled), map column.
        self.tok_slot = torch.full((max_tokens,), self.trash, **i64)
        self.tok_col = torch.zeros(max_tokens, **i64)
        self.tok_onehot = torch.zeros(max_tokens, max(num_gated, 1), **f32)
        self.tok_on = torch.zeros(max_tokens, **f32)
        self.tok_bias = torch.zeros(max_tokens, **f32)
        self._tok_end = torch.zeros(max_tokens, **i64)
        self._tok_mask = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self._trash_fill = torch.full((max_tokens,), self.trash, **i64)
        # Per request row (+ padding row), written by the host each step.
        rows = max_tokens + 1
        self.req_slot = torch.full((rows,), self.trash, **i64)  # pooling slot or trash
        self.req_any_slot = torch.full((rows,), self.trash, **i64)  # the decision's slot
        self.req_gate_end = torch.zeros(rows, **i64)  # positions < this are pooled
        self.req_col = torch.zeros(rows, **i64)
        self.req_gated = torch.zeros(rows, dtype=torch.bool, device=device)
        self.factor = torch.ones(rows, **f32)
        self._rows = TokenRequestIndex(max_tokens, rows - 1, device)
        names = ("req_slot", "req_any_slot", "req_gate_end", "req_col", "req_gated")
        self._host_rows = HostRows({n: getattr(self, n) for n in names})
        pin = device.type == "cuda" and torch.cuda.is_available()
        # Slots being reset or decided this step, and their maps' gate columns.
        self._fresh_host = torch.zeros(max_slots, dtype=torch.int64, pin_memory=pin)
        self._fresh = torch.zeros(max_slots, dtype=torch.int64, device=device)
        self._decide_host = torch.zeros(2, max_slots, dtype=torch.int64, pin_memory=pin)
        self._decide_dev = torch.zeros(2, max_slots, dtype=torch.int64, device=device)
        # Host bookkeeping.
        self._free = list(range(max_slots - 1, -1, -1))
        self._slot: dict[str, int] = {}
        self._decided: set[str] = set()
        self._key: dict[str, tuple[str, int]] = {}  # req_id -> (gate key, map id)
        self._pending: list[tuple[list[str], torch.Tensor, Any]] = []
        self.results: dict[str, GateResult] = {}
        self._no_slot_logged: set[str] = set()
        self._dirty = 0

    # ------------------------------------------------------------------ inside forward

    def pool_(self, n: int) -> None:
        """After the last gate layer: score this step's tokens and pool them per slot."""
        torch.mm(self.features[:n], self.v, out=self.scores[:n])
        if self.tp_size > 1:  # each rank holds its shard's features: sum the partial dots
            from vllm.distributed import tensor_model_parallel_all_reduce

            self.scores[:n].copy_(tensor_model_parallel_all_reduce(self.scores[:n]))
        s = self.weight[:n]
        # Each token's own map's score: a one-hot row per token (no gather: its out=
        # form does not trace with symbolic sizes).
        torch.mul(self.scores[:n], self.tok_onehot[:n], out=self.scores[:n])
        torch.sum(self.scores[:n], dim=1, out=s)
        s.add_(self.tok_bias[:n]).tanh_().exp_().mul_(self.tok_on[:n])
        torch.mul(self.features[:n], s[:, None], out=self.weighted[:n])
        self.z_sum.index_add_(0, self.tok_slot[:n], self.weighted[:n])
        self.w_sum.index_add_(0, self.tok_slot[:n], s)

    # ------------------------------------------------------------------ once per step

    def on_step(
        self,
        layout: StepLayout,
        key_of: Callable[[str], str],  # req id -> the tag its result is filed under
        gated: np.ndarray,
        map_id: np.ndarray,
    ) -> torch.Tensor:
        """Route this step's tokens, decide requests whose gate input is complete, and
        return the per-row alpha factor (``[num_reqs]`` on the device)."""
        self._harvest(block=False)
        self._host_rows.wait()
        req_ids, num_computed, prompt_len = layout.req_ids, layout.num_computed, layout.prompt_len
        positions = layout.positions
        num_reqs = layout.num_reqs
        total = layout.num_tokens
        np_ = self._host_rows.np
        np_["req_slot"][: num_reqs + 1] = self.trash
        np_["req_any_slot"][: num_reqs + 1] = self.trash
        np_["req_gate_end"][: num_reqs + 1] = 0
        np_["req_col"][: num_reqs + 1] = 0
        np_["req_gated"][: num_reqs + 1] = False
        deciding_rows: list[int] = []
        fresh: list[int] = []
        for row in np.flatnonzero(gated):
            req_id = req_ids[row]
            slot = self._slot.get(req_id)
            if slot is None:
                if not self._free:
                    if req_id not in self._no_slot_logged:
                        self._no_slot_logged.add(req_id)
                        logger.warning(
                            "adaras gate: no free gate slot (%d in use) for request %s; it "
                            "runs unsteered and reports no gate score", self.max_slots, req_id)
                    continue  # factor 0: never steered, never wrong-steered
                slot = self._free.pop()
                self._slot[req_id] = slot
                fresh.append(slot)
                self._key[req_id] = (str(key_of(req_id)), int(map_id[row]))
            np_["req_any_slot"][row] = slot
            np_["req_gated"][row] = True
            np_["req_col"][row] = self.col_of_map.get(int(map_id[row]), 0)
            if req_id in self._decided:
                continue
            if int(num_computed[row]) == 0 and slot not in fresh:
                fresh.append(slot)  # recomputed from scratch before its decision
            if int(num_computed[row]) >= int(prompt_len[row]) - 1:
                deciding_rows.append(row)  # positions 0..P-2 are all pooled
            else:
                np_["req_slot"][row] = slot
                np_["req_gate_end"][row] = int(prompt_len[row]) - 1
        if fresh:
            self._fresh_host[: len(fresh)] = torch.as_tensor(fresh)
            idx = self._fresh[: len(fresh)]
            idx.copy_(self._fresh_host[: len(fresh)], non_blocking=True)
            self.z_sum.index_fill_(0, idx, 0.0)
            self.w_sum.index_fill_(0, idx, 0.0)
            self.fired.index_fill_(0, idx, 0.0)  # undecided: not steered
        if deciding_rows:
            self._decide([req_ids[r] for r in deciding_rows],
                         [self._slot[req_ids[r]] for r in deciding_rows],
                         [int(map_id[r]) for r in deciding_rows])
        self._host_rows.publish(num_reqs + 1)
        # Per token on the device, from the batch's own layout.
        req = self._rows.build(layout.query_start_loc, num_reqs, total)
        torch.index_select(self.req_gate_end, 0, req, out=self._tok_end[:total])
        torch.lt(positions, self._tok_end[:total], out=self._tok_mask[:total])
        torch.index_select(self.req_slot, 0, req, out=self.tok_slot[:total])
        torch.where(self._tok_mask[:total], self.tok_slot[:total], self._trash_fill[:total],
                    out=self.tok_slot[:total])
        torch.index_select(self.req_col, 0, req, out=self.tok_col[:total])
        self.tok_onehot[:total].zero_().scatter_(1, self.tok_col[:total, None], 1.0)
        self.tok_on[:total].copy_(self._tok_mask[:total])
        torch.index_select(self.scorer_bias, 0, self.tok_col[:total], out=self.tok_bias[:total])
        if self._dirty > total:
            self.tok_slot[total : self._dirty].fill_(self.trash)
            self.tok_on[total : self._dirty].zero_()
        self._dirty = total
        # Alpha factor per row: 1, or the decision of a gated request (0 until decided).
        fired = self.fired.index_select(0, self.req_any_slot[:num_reqs])
        return torch.where(self.req_gated[:num_reqs], fired, self.factor[:num_reqs])

    def clear_tokens(self) -> None:
        """Dummy runs call the model directly: pool nothing."""
        if self._dirty:
            self.tok_slot[: self._dirty].fill_(self.trash)
            self.tok_on[: self._dirty].zero_()
            self._dirty = 0

    def _decide(self, req_ids: list[str], slots: list[int], map_ids: list[int]) -> None:
        """On the device, queued on the stream after the forwards that pooled these slots
        (outside any forward). Small allocations, once per deciding step."""
        n = len(slots)
        self._decide_host[0, :n] = torch.as_tensor(slots)
        self._decide_host[1, :n] = torch.as_tensor([self.col_of_map[m] for m in map_ids])
        both = self._decide_dev[:, :n]
        both.copy_(self._decide_host[:, :n], non_blocking=True)
        idx, cols = both[0], both[1]
        z = self.z_sum.index_select(0, idx) / self.w_sum.index_select(0, idx).clamp_min(
            torch.finfo(torch.float32).tiny)[:, None]
        p = torch.zeros(n, dtype=torch.float32, device=self.device)
        for c, m_id in enumerate(self.gated):
            if m_id not in map_ids:
                continue
            b1, w2, b2 = self.mlp[c]
            h = z @ self.w1[c]
            if self.tp_size > 1:
                from vllm.distributed import tensor_model_parallel_all_reduce

                h = tensor_model_parallel_all_reduce(h)
            logit = torch.relu(h + b1) @ w2 + b2[0]
            p = torch.where(cols == c, torch.sigmoid(logit), p)
        self.p_good.index_copy_(0, idx, p)
        self.fired.index_copy_(0, idx, (p < self.thresholds.index_select(0, cols)).float())
        self._decided.update(req_ids)
        copied = None
        if self.device.type == "cuda":
            host = p.to("cpu", non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        else:
            host = p
        self._pending.append((req_ids, host, copied))

    def _harvest(self, block: bool) -> None:
        """Move decided scores to ``results`` once their copies have landed."""
        still: list[tuple[list[str], torch.Tensor, Any]] = []
        for req_ids, p_host, copied in self._pending:
            if copied is not None:
                if block:
                    copied.synchronize()  # waits for this copy only, not the forward
                elif not copied.query():
                    still.append((req_ids, p_host, copied))
                    continue
            for req_id, p in zip(req_ids, p_host.tolist()):
                key, m_id = self._key.get(req_id, (req_id, 0))
                g = self.maps[m_id].gate
                self.results[key] = GateResult(float(p), bool(p < g.threshold), g.threshold,
                                               self.maps[m_id].name)
        self._pending = still
        while len(self.results) > MAX_KEPT_RESULTS:
            self.results.pop(next(iter(self.results)))

    def forget(self, req_id: str) -> None:
        """The request left the runner: its slot is free (its result, if any, stays)."""
        slot = self._slot.pop(req_id, None)
        if slot is not None:
            self._harvest(block=True)
            self._free.append(slot)
        self._decided.discard(req_id)
        self._key.pop(req_id, None)
        self._no_slot_logged.discard(req_id)

    def fetch(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Pop finished results (all, or those of ``keys`` that exist), in wire form."""
        self._harvest(block=True)
        wanted = list(self.results) if keys is None else [k for k in keys if k in self.results]
        return {k: self.results.pop(k).to_wire() for k in wanted}

    @property
    def num_tracked(self) -> int:
        return len(self._slot)


def install_gate(
    model: nn.Module,
    maps: Sequence[NeuronMap],
    intermediate_size: int,
    *,
    max_tokens: int,
    max_slots: int,
    dtype: torch.dtype,
) -> GateState | None:
    """Patch every layer holding a gated map's features; None when no map has a gate."""
    from .model_patch import with_mixin

    if not any(m.gate is not None for m in maps):
        return None
    per_layer: dict[int, list[tuple[int, int, int]]] = {}
    for m_id, m in enumerate(maps):
        if m.gate is None:
            continue
        for j, (layer, neuron) in enumerate(zip(m.gate.layers.tolist(), m.gate.neurons.tolist())):
            per_layer.setdefault(layer, []).append((m_id, j, neuron))
    downs = require_down_projs(model, per_layer, lambda layer: "the correctness gate reads")
    local: list[tuple[int, int, int]] = []
    columns: dict[int, tuple[int, int]] = {}
    tp_size = 1
    for layer in sorted(per_layer):
        start, size = intermediate_shard(downs[layer], intermediate_size)
        tp_size = max(tp_size, intermediate_size // size)
        mine = [(m_id, j, n - start) for m_id, j, n in per_layer[layer]
                if start <= n < start + size]
        columns[layer] = (len(local), len(local) + len(mine))
        local.extend(mine)
    device = device_of(downs[min(downs)])
    state = GateState(maps, columns, local, max_tokens=max_tokens, max_slots=max_slots,
                      device=device, tp_size=tp_size)
    last = max(per_layer)
    for layer, (c0, c1) in columns.items():
        down = downs[layer]
        down.adaras_gate_idx = torch.tensor([n for _, _, n in local[c0:c1]], dtype=torch.int64,
                                            device=device)
        down.adaras_gate_feat = torch.zeros(max_tokens, c1 - c0, dtype=dtype, device=device)
        down.adaras_gate_cols = state.features[:, c0:c1]
        down.adaras_gate_pool = state if layer == last else None
        down.__class__ = with_mixin(GatedDownProj, type(down))
    return state
