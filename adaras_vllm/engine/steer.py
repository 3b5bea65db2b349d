"""The steer op and the tables behind it.

For each steered layer all loaded maps are merged into one table over the union of their
neurons in that layer; the layers' tables are laid side by side in one ``[num_maps, U]``
table. Once per step (outside the forward) the per-token deltas
``alpha[t] * table[map_id[t]]`` are computed for every layer at once into a static buffer;
inside the forward each steered layer then does exactly one indexed add of its columns.
A batch mixing maps and alphas costs the same as one steered request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaras_vllm.maps import NeuronMap


@dataclass
class LayerTable:
    """Neurons steered in one layer, local to this rank's shard of the intermediate dim.

    ``indices[j]`` is a column of this rank's ``down_proj`` input; ``table[m, j]`` is the
    weight map ``m`` gives that neuron (0 where map ``m`` does not steer it).
    """

    indices: torch.Tensor  # int64 [U_l]
    table: torch.Tensor  # float32 [num_maps, U_l]


def build_layer_table(
    maps: Sequence[NeuronMap], layer: int, shard_start: int, shard_size: int
) -> LayerTable | None:
    """Merge every map's neurons of ``layer`` that fall in ``[shard_start, shard_start+size)``.

    Returns None when no map steers a neuron of this shard (the layer is left untouched).
    Indices are re-based to the shard, since a row-parallel ``down_proj`` receives only
    its own slice of the intermediate activations.
    """
    per_map: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in maps:
        idx, w = m.layers.get(layer, (torch.empty(0, dtype=torch.int64), torch.empty(0)))
        keep = (idx >= shard_start) & (idx < shard_start + shard_size)
        per_map.append((idx[keep] - shard_start, w[keep].to(torch.float32)))
    union = torch.unique(torch.cat([idx for idx, _ in per_map]), sorted=True)
    if union.numel() == 0:
        return None
    table = torch.zeros(len(maps), union.numel(), dtype=torch.float32)
    for m_id, (idx, w) in enumerate(per_map):
        table[m_id, torch.searchsorted(union, idx)] = w
    return LayerTable(indices=union.to(torch.int64), table=table)


@dataclass
class SteeringTables:
    """All steered layers' tables side by side: layer ``l`` owns columns ``columns[l]``."""

    table: torch.Tensor  # float32 [num_maps, U]
    indices: dict[int, torch.Tensor]  # layer -> int64 [U_l], shard-local neuron indices
    columns: dict[int, tuple[int, int]]  # layer -> [start, stop) in ``table``

    @classmethod
    def concat(cls, layers: dict[int, LayerTable], num_maps: int) -> "SteeringTables":
        columns, start = {}, 0
        for layer, t in sorted(layers.items()):
            columns[layer] = (start, start + t.indices.numel())
            start += t.indices.numel()
        parts = [layers[layer].table for layer in sorted(layers)]
        table = torch.cat(parts, dim=1) if parts else torch.zeros(num_maps, 0)
        indices = {layer: t.indices for layer, t in layers.items()}
        return cls(table=table, indices=indices, columns=columns)


def steer_(
    x: torch.Tensor, delta: torch.Tensor, indices: torch.Tensor,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place: ``x[t, indices] += delta[t]`` for every token ``t`` of ``x``.

    ``delta`` is a view of the static per-token delta buffer (longer than ``x``; rows past
    the current tokens are zero). No allocation, no host sync, no data-dependent shape:
    safe to trace with torch.compile and capture in a CUDA graph.

    One ``index_add_`` by default (a single kernel on a GPU). With ``scratch`` (a static
    ``[max_tokens, k]`` buffer in ``x``'s dtype) it gathers, adds and scatters back
    instead: bit-identical (indices are unique, each sum rounded once), and on the CPU in
    bf16 about 100x faster at 2048 tokens than ``index_add_``, which takes a slow path
    for reduced-precision dtypes there.
    """
    if scratch is None:
        return x.index_add_(1, indices, delta[: x.shape[0]])
    n = x.shape[0]
    torch.index_select(x, 1, indices, out=scratch[:n])
    scratch[:n].add_(delta[:n])
    return x.index_copy_(1, indices, scratch[:n])
