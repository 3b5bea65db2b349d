"""The steer op and the per-layer tables it reads.

For each steered layer all loaded maps are merged into one table over the union of
their neurons in that layer, so a batch that mixes maps and alphas still costs exactly
one gather-multiply and one indexed add per layer.
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

    indices: torch.Tensor  # int64 [U]
    table: torch.Tensor  # float32 [num_maps, U]


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


def steer_(
    x: torch.Tensor,
    alpha: torch.Tensor,
    map_id: torch.Tensor,
    indices: torch.Tensor,
    table: torch.Tensor,
) -> torch.Tensor:
    """In place: ``x[t, indices] += alpha[t] * table[map_id[t]]`` for every token ``t``.

    ``alpha``/``map_id`` are the static per-token buffers (longer than ``x``; entries past
    the current tokens are zero). Fixed shapes, no host sync, no Python loop: safe to
    trace with torch.compile and to capture in a CUDA graph.
    """
    n = x.shape[0]
    delta = alpha[:n, None] * table[map_id[:n]]
    return x.index_add_(1, indices, delta.to(x.dtype))
