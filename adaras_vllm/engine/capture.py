"""Capture mode: per-request mean of every layer's ``down_proj`` input, computed in-engine.

Building a map needs, for each labelled trace, the mean over its tokens of every MLP
neuron's activation. Keeping per-token activations would cost tokens x layers x
intermediate floats per trace; instead each request that asks for capture gets a *slot*
and every layer adds its tokens' activations into that slot's running sum on the device,
so memory is ``layers x (slots + 1) x intermediate`` floats however long the traces are.

Per step, outside the forward, the host writes each request's slot and prompt length;
the device maps every scheduled token to its request (from the batch's own
``query_start_loc``) and, from the batch's own ``positions``, to its slot or to a trash
row (tokens not captured, padding). Inside the forward each layer does one ``index_add_``
into its sums. Chunked prefill simply continues a slot's sum; a request recomputed from
position 0 after preemption starts its sum again. Only prompt positions are captured.

Optionally (``ADARAS_CAPTURE_TOKEN_FEATURES`` = a JSON file ``{"layers": [...],
"neurons": [...]}``) a chosen set of features is also kept per token, in that order: what
a correctness gate is trained on. Those rows are copied to the host once per step (a
sync, acceptable in an offline capture job, never in serving).

A request opts in with ``SamplingParams.extra_args["adaras_capture"] = "<key>"``; finished
sums are collected per key through ``LLM.collective_rpc("adaras_capture_fetch")``.
Capture needs prefix caching off (cached tokens never reach the forward; such a result is
flagged ``complete=False``). It runs eager or compiled: the sums and the slot buffer are
static tensors, allocated once and only mutated in place, so a torch.compile'd graph reads
them by reference and its in-place accumulation lands in the same storage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .host_rows import HostRows
from .shard import device_of, intermediate_shard, require_down_projs
from .step_layout import StepLayout
from .token_rows import TokenRequestIndex

CAPTURE_ENV = "ADARAS_CAPTURE"
TOKEN_FEATURES_ENV = "ADARAS_CAPTURE_TOKEN_FEATURES"
CAPTURE_KEY = "adaras_capture"
FETCH_METHOD = "adaras_capture_fetch"


def capture_enabled() -> bool:
    return os.environ.get(CAPTURE_ENV, "").strip() not in ("", "0", "false", "False")


class CapturedDownProj:
    """Mixin placed in front of a ``down_proj`` class: add its input into the slot sums.

    ``adaras_sums`` is this layer's ``[slots + 1, I_local]`` view of the capture buffer,
    ``adaras_slot`` the static per-token slot buffer (the last row is the trash row).
    """

    #: Read the activation itself: vLLM must not hand this layer fp8/fp4 data from a
    #: fused activation+quant kernel (as it does for LoRA's down_proj).
    requires_unquantized_input = True

    adaras_sums: torch.Tensor
    adaras_slot: torch.Tensor

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.adaras_sums.index_add_(0, self.adaras_slot[: x.shape[0]], x.float())
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


class TokenCapturedDownProj:
    """Mixin: also copy this layer's chosen features of every token into the per-token
    feature buffer (the step's rows are moved to the host before the next step)."""

    #: Read the activation itself: vLLM must not hand this layer fp8/fp4 data from a
    #: fused activation+quant kernel (as it does for LoRA's down_proj).
    requires_unquantized_input = True

    adaras_tok_idx: torch.Tensor  # int64 [k_l], shard-local neuron indices
    adaras_tok_feat: torch.Tensor  # [max_tokens, k_l] activation dtype
    adaras_tok_cols: torch.Tensor  # [max_tokens, k_l] f32 view into the shared buffer

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        torch.index_select(x, 1, self.adaras_tok_idx, out=self.adaras_tok_feat[:n])
        self.adaras_tok_cols[:n].copy_(self.adaras_tok_feat[:n])
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


@dataclass
class CaptureResult:
    """One request's activation sums on this rank: ``sums`` is ``[layers, I_local]``;
    ``token_features`` ``[prompt_len, n_local]`` the chosen per-token features this rank
    holds, whose places in the requested order are ``feature_index``."""

    sums: np.ndarray
    tokens: int  # tokens added into ``sums``
    prompt_len: int
    complete: bool  # every prompt token passed through the forward exactly once
    token_features: np.ndarray | None = None
    feature_index: np.ndarray | None = None

    def to_wire(self) -> dict[str, Any]:
        """Plain types only: utility results cross process boundaries as msgpack."""
        out = {
            "sums": self.sums.astype(np.float32, copy=False).tobytes(),
            "shape": list(self.sums.shape),
            "tokens": self.tokens,
            "prompt_len": self.prompt_len,
            "complete": self.complete,
        }
        if self.token_features is not None and self.feature_index is not None:
            out["token_features"] = self.token_features.astype(np.float32, copy=False).tobytes()
            out["token_shape"] = list(self.token_features.shape)
            out["feature_index"] = self.feature_index.astype(np.int64).tolist()
        return out

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "CaptureResult":
        sums = np.frombuffer(d["sums"], dtype=np.float32).reshape(d["shape"])
        tok = idx = None
        if "token_features" in d:
            tok = np.frombuffer(d["token_features"], dtype=np.float32).reshape(d["token_shape"])
            idx = np.asarray(d["feature_index"], dtype=np.int64)
        return cls(sums, int(d["tokens"]), int(d["prompt_len"]), bool(d["complete"]), tok, idx)


class CaptureState:
    """Device-side running sums per slot plus the host bookkeeping of who owns which slot."""

    def __init__(
        self, num_layers: int, width: int, max_slots: int, max_tokens: int, device: torch.device
    ) -> None:
        self.num_layers = num_layers
        self.max_slots = max_slots
        self.trash = max_slots
        self.sums = torch.zeros(num_layers, max_slots + 1, width, dtype=torch.float32,
                                device=device)
        self.slot = torch.full((max_tokens,), self.trash, dtype=torch.int64, device=device)
        # Per request row (a step has at most one request per token) plus the padding row:
        # slot and prompt length, written by the host.
        rows = max_tokens + 1
        self.req_slot = torch.full((rows,), self.trash, dtype=torch.int64, device=device)
        self.req_prompt_len = torch.zeros(rows, dtype=torch.int64, device=device)
        self._host_rows = HostRows({"slot": self.req_slot, "prompt_len": self.req_prompt_len})
        self._rows = TokenRequestIndex(max_tokens, max_tokens, device)
        self._tok_slot = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._tok_plen = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._in_prompt = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self._trash_fill = torch.full((max_tokens,), self.trash, dtype=torch.int64,
                                      device=device)
        self._dirty = 0  # leading token rows of ``slot`` that may not be trash
        self._free = list(range(max_slots - 1, -1, -1))
        self._owner: dict[str, tuple[str, int]] = {}  # req_id -> (key, slot)
        self._tokens = np.zeros(max_slots, np.int64)
        self._prompt_len = np.zeros(max_slots, np.int64)
        self._complete = np.ones(max_slots, bool)
        self._done: list[str] = []  # req ids whose prompt is fully added after this step
        self._keys: dict[str, str | None] = {}
        self.results: dict[str, CaptureResult] = {}
        # Per-token features (optional): set by install_capture.
        self.token_features: torch.Tensor | None = None
        self.feature_index: np.ndarray | None = None
        self._token_rows: dict[int, list[np.ndarray]] = {}
        self._last_total = 0

    def key_of(self, req_id: str, sampling_params: Any) -> str | None:
        if req_id not in self._keys:
            extra = getattr(sampling_params, "extra_args", None) or {}
            key = extra.get(CAPTURE_KEY)
            self._keys[req_id] = str(key) if key is not None else None
        return self._keys[req_id]

    def on_step(self, layout: StepLayout, keys: list[str | None],
                live: set[str] | None = None) -> None:
        """Route this step's tokens to slots. ``keys``: each batch row's capture key (None:
        not captured). ``live`` (V1, which has no removal hook) lets slots of vanished
        requests go."""
        req_ids = layout.req_ids
        num_scheduled, num_computed, prompt_len = (
            layout.num_scheduled, layout.num_computed, layout.prompt_len)
        self.harvest()  # also collects the last step's per-token rows
        if live is not None and len(self._keys) > 2 * self.max_slots:
            self.prune(live)
        total = int(num_scheduled.sum())
        if total > self.slot.shape[0]:
            raise RuntimeError(
                f"adaras capture: step has {total} tokens but the slot buffer holds "
                f"{self.slot.shape[0]}"
            )
        row_slot = np.full(len(req_ids), self.trash, np.int64)
        fresh: list[int] = []
        for row, (req_id, key) in enumerate(zip(req_ids, keys)):
            key = self._keys.get(req_id, key)  # None once harvested above
            if key is None:
                continue
            owned = self._owner.get(req_id)
            if owned is None:
                if not self._free:
                    raise RuntimeError(
                        "adaras capture: more capturing requests than slots "
                        f"({self.max_slots}); lower max_num_seqs"
                    )
                owned = (key, self._free.pop())
                self._owner[req_id] = owned
                fresh.append(owned[1])
                self._complete[owned[1]] = int(num_computed[row]) == 0
            slot = owned[1]
            if int(num_computed[row]) == 0 and slot not in fresh:
                fresh.append(slot)  # recomputed from scratch after preemption
                self._complete[slot] = True
            row_slot[row] = slot
            self._prompt_len[slot] = int(prompt_len[row])
        if fresh:
            idx = torch.tensor(fresh, dtype=torch.int64, device=self.sums.device)
            self.sums.index_fill_(1, idx, 0.0)
            self._tokens[fresh] = 0
            for slot in fresh:
                self._token_rows.pop(slot, None)

        self._route(row_slot, prompt_len, layout.query_start_loc, layout.positions)

        captured = row_slot != self.trash
        added = np.minimum(num_computed + num_scheduled, prompt_len) - np.minimum(
            num_computed, prompt_len)
        np.add.at(self._tokens, row_slot[captured], added[captured])
        finished = captured & (num_computed + num_scheduled >= prompt_len)
        self._done.extend(req_ids[row] for row in np.flatnonzero(finished))

    def _route(
        self,
        row_slot: np.ndarray,
        prompt_len: np.ndarray,
        query_start_loc: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Per-token slot on the device: the request's slot at prompt positions, else trash."""
        num_reqs = int(row_slot.shape[0])
        total = int(positions.shape[0])
        host = self._host_rows
        host.wait()
        host.np["slot"][:num_reqs] = row_slot
        host.np["prompt_len"][:num_reqs] = prompt_len
        host.np["slot"][num_reqs] = self.trash  # tokens past the last request (padding)
        host.np["prompt_len"][num_reqs] = 0
        host.publish(num_reqs + 1)
        req = self._rows.build(query_start_loc, num_reqs, total)
        torch.index_select(self.req_slot, 0, req, out=self._tok_slot[:total])
        torch.index_select(self.req_prompt_len, 0, req, out=self._tok_plen[:total])
        torch.lt(positions, self._tok_plen[:total], out=self._in_prompt[:total])
        torch.where(self._in_prompt[:total], self._tok_slot[:total],
                    self._trash_fill[:total], out=self.slot[:total])
        if self._dirty > total:
            self.slot[total : self._dirty].fill_(self.trash)
        self._dirty = total
        self._last_total = total

    def clear_tokens(self) -> None:
        """Dummy runs call the model directly: route every token to the trash row."""
        self._collect_token_rows()
        if self._dirty:
            self.slot[: self._dirty].fill_(self.trash)
            self._dirty = 0

    def _collect_token_rows(self) -> None:
        """Move the last step's per-token features to their slots' lists (host sync)."""
        n, self._last_total = self._last_total, 0
        if self.token_features is None or n == 0:
            return
        slots = self.slot[:n].cpu().numpy()
        keep = slots != self.trash
        if not keep.any():
            return
        rows = self.token_features[:n].cpu().numpy()[keep]
        for slot in np.unique(slots[keep]):  # rows of one request are in position order
            self._token_rows.setdefault(int(slot), []).append(rows[slots[keep] == slot])

    def harvest(self) -> None:
        """Move the sums of requests whose prompt is complete to the host; free slots."""
        self._collect_token_rows()
        if not self._done:
            return
        done = [r for r in dict.fromkeys(self._done) if r in self._owner]
        self._done.clear()
        if not done:
            return
        slots = [self._owner[r][1] for r in done]
        idx = torch.tensor(slots, dtype=torch.int64, device=self.sums.device)
        host = self.sums.index_select(1, idx).cpu().numpy()  # [layers, k, I_local]
        for j, req_id in enumerate(done):
            key, slot = self._owner.pop(req_id)
            self._keys[req_id] = None  # captured once; later (decode) steps go to trash
            token_rows = self._token_rows.pop(slot, None)
            width = 0 if self.feature_index is None else len(self.feature_index)
            self.results[key] = CaptureResult(
                sums=np.ascontiguousarray(host[:, j, :]),
                tokens=int(self._tokens[slot]),
                prompt_len=int(self._prompt_len[slot]),
                complete=bool(self._complete[slot])
                and int(self._tokens[slot]) == int(self._prompt_len[slot]),
                token_features=None if self.token_features is None else (
                    np.concatenate(token_rows) if token_rows
                    else np.zeros((0, width), np.float32)),
                feature_index=self.feature_index,
            )
            self._free.append(slot)

    def forget(self, req_id: str) -> None:
        """A request left before its prompt was complete (aborted): release its slot."""
        self._keys.pop(req_id, None)
        owned = self._owner.pop(req_id, None)
        if owned is not None and req_id not in self._done:
            self._free.append(owned[1])
            self._token_rows.pop(owned[1], None)

    def prune(self, live: set[str]) -> None:
        """Release what requests that are gone still hold (V1 has no removal hook)."""
        for req_id in [r for r in self._keys if r not in live]:
            self.forget(req_id)

    def fetch(self) -> dict[str, dict[str, Any]]:
        """Pop every finished result, in wire form."""
        self.harvest()
        out = {k: r.to_wire() for k, r in self.results.items()}
        self.results.clear()
        return out


def install_capture(
    model: nn.Module, num_layers: int, *, max_slots: int, max_tokens: int
) -> CaptureState:
    """Patch every ``layers.N.mlp.down_proj`` to add its input into the capture sums."""
    from .model_patch import with_mixin

    downs = require_down_projs(model, range(num_layers), lambda layer: "capture mode reads")
    first = downs[0]
    _, width = intermediate_shard(first)
    device = device_of(first)
    state = CaptureState(num_layers, width, max_slots, max_tokens, device)
    for layer, down in downs.items():
        down.adaras_sums = state.sums[layer]
        down.adaras_slot = state.slot
        down.__class__ = with_mixin(CapturedDownProj, type(down))
    features = _token_features_from_env()
    if features is not None:
        _install_token_features(state, downs, features, max_tokens, device)
    return state


def _token_features_from_env() -> tuple[list[int], list[int]] | None:
    import json

    path = os.environ.get(TOKEN_FEATURES_ENV, "").strip()
    if not path:
        return None
    with open(path) as f:
        spec = json.load(f)
    layers, neurons = [int(v) for v in spec["layers"]], [int(v) for v in spec["neurons"]]
    if len(layers) != len(neurons) or not layers:
        raise ValueError(f"{TOKEN_FEATURES_ENV} file {path}: 'layers' and 'neurons' must be "
                         "non-empty lists of the same length")
    return layers, neurons


def _install_token_features(state: CaptureState, downs: dict[int, nn.Module],
                            features: tuple[list[int], list[int]], max_tokens: int,
                            device: torch.device) -> None:
    """Per-token capture of the chosen (layer, neuron) features this rank holds."""
    from .model_patch import with_mixin

    layers, neurons = features
    per_layer: dict[int, list[tuple[int, int]]] = {}
    for order, (layer, neuron) in enumerate(zip(layers, neurons)):
        if layer not in downs:
            raise ValueError(f"{TOKEN_FEATURES_ENV}: layer {layer} is not a layer of the model "
                             f"(0..{max(downs)})")
        per_layer.setdefault(layer, []).append((order, neuron))
    columns: list[tuple[int, int, int]] = []  # (order, layer, local neuron)
    for layer in sorted(per_layer):
        start, local = intermediate_shard(downs[layer])
        columns += [(o, layer, n - start) for o, n in per_layer[layer]
                    if start <= n < start + local]
    state.token_features = torch.zeros(max_tokens, len(columns), dtype=torch.float32,
                                       device=device)
    state.feature_index = np.asarray([o for o, _, _ in columns], dtype=np.int64)
    col = 0
    for layer in sorted(per_layer):
        mine = [n for _, lyr, n in columns if lyr == layer]
        down = downs[layer]
        dtype = next(down.parameters()).dtype
        down.adaras_tok_idx = torch.tensor(mine, dtype=torch.int64, device=device)
        down.adaras_tok_feat = torch.zeros(max_tokens, len(mine), dtype=dtype, device=device)
        down.adaras_tok_cols = state.token_features[:, col : col + len(mine)]
        down.__class__ = with_mixin(TokenCapturedDownProj, type(down))
        col += len(mine)
