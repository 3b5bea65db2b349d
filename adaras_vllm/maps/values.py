"""Checks on a map's per-neuron values, and the one canonical form they are kept in.

Every map, whether built, loaded or cut down, goes through these checks, so the engine can
trust any NeuronMap: indices unique and in range, values finite, ranks exactly 0..n-1.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import MapFormatError, some

LayerTensors = dict[int, tuple[torch.Tensor, torch.Tensor]]


class CanonicalLayers(NamedTuple):
    """Per-layer tensors, layers ascending, each layer sorted by neuron index, none empty."""

    layers: LayerTensors
    ranks: dict[int, torch.Tensor]  # empty when no ranks were given
    good_mean: dict[int, torch.Tensor] | None
    bad_mean: dict[int, torch.Tensor] | None


def canonical_layers(
    who: str,
    layers: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    ranks: Mapping[int, torch.Tensor] | None,
    good_mean: Mapping[int, torch.Tensor] | None,
    bad_mean: Mapping[int, torch.Tensor] | None,
    *,
    num_hidden_layers: int,
    intermediate_size: int,
) -> CanonicalLayers:
    """Check every layer's tensors and sort them by neuron index; drop layers without neurons."""
    for extra_name, extra in (("ranks", ranks), ("good_mean", good_mean),
                              ("bad_mean", bad_mean)):
        if extra is not None and set(extra) != set(layers):
            raise MapFormatError(
                f"{who}: {extra_name} covers layers {some(sorted(extra))} but the map has "
                f"neurons in layers {some(sorted(layers))}; they must be the same layers"
            )
    result = CanonicalLayers({}, {}, {} if good_mean is not None else None,
                             {} if bad_mean is not None else None)
    for key in sorted(layers, key=layer_sort_key(who)):
        layer = int(key)  # keys may be numpy integers; the map stores plain ints
        where = f"{who}: layer {layer}"
        if not 0 <= layer < num_hidden_layers:
            raise no_such_layer(where, num_hidden_layers)
        indices, weights = layers[key]
        parts = {
            "indices": checked_vector(indices, torch.int64, f"{where}: indices"),
            "weights": checked_vector(weights, torch.float32, f"{where}: weights"),
        }
        if ranks is not None:
            parts["rank"] = checked_vector(ranks[key], torch.int64, f"{where}: rank")
        for mean_name, means in (("good_mean", good_mean), ("bad_mean", bad_mean)):
            if means is not None:
                parts[mean_name] = checked_vector(means[key], torch.float32,
                                                  f"{where}: {mean_name}")
        k = parts["indices"].numel()
        for part_name, tensor in parts.items():
            if tensor.numel() != k:
                raise MapFormatError(
                    f"{where}: {part_name} has {tensor.numel()} entries but indices has "
                    f"{k}; every per-neuron tensor must have one entry per index"
                )
        if k == 0:
            continue
        order = torch.argsort(parts["indices"], stable=True)
        parts = {part_name: tensor[order].contiguous() for part_name, tensor in parts.items()}
        check_indices(parts["indices"], intermediate_size, where)
        for part_name in ("weights", "good_mean", "bad_mean"):
            if part_name in parts:
                check_finite(parts[part_name], parts["indices"], f"{where}: {part_name}")
        result.layers[layer] = (parts["indices"], parts["weights"])
        if ranks is not None:
            result.ranks[layer] = parts["rank"]
        for mean_name, kept in (("good_mean", result.good_mean), ("bad_mean", result.bad_mean)):
            if kept is not None:
                kept[layer] = parts[mean_name]
    return result


def no_such_layer(where: str, num_hidden_layers: int) -> MapFormatError:
    """The error for a layer number the model does not have (`where` names the layer)."""
    return MapFormatError(
        f"{where} does not exist in a model with {num_hidden_layers} layers "
        f"(num_hidden_layers={num_hidden_layers}); layers must be in [0, {num_hidden_layers})"
    )


def layer_sort_key(who: str) -> Callable[[Any], int]:
    """A sort key that refuses layer keys that are not integers."""
    def key(layer: Any) -> int:
        if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
            raise MapFormatError(f"{who}: layer keys must be integers, got {layer!r}")
        return int(layer)

    return key


def checked_vector(tensor: Any, dtype: torch.dtype, where: str) -> torch.Tensor:
    """`tensor` on the CPU, if it is a 1-D torch.Tensor of exactly `dtype`."""
    if not isinstance(tensor, torch.Tensor):
        raise MapFormatError(f"{where} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise MapFormatError(f"{where} has dtype {dtype_name(tensor.dtype)}; "
                             f"expected {dtype_name(dtype)}")
    if tensor.dim() != 1:
        raise MapFormatError(
            f"{where} has shape {tuple(tensor.shape)}; expected a 1-D tensor (one entry per neuron)"
        )
    return tensor.detach().cpu()


def check_indices(indices: torch.Tensor, intermediate_size: int, where: str) -> None:
    """`indices` is sorted here, so duplicates are neighbours and the range is its ends."""
    duplicated = indices[1:][indices[1:] == indices[:-1]]
    if duplicated.numel():
        raise MapFormatError(
            f"{where}: duplicate neuron indices {some(sorted(set(duplicated.tolist())))}; "
            "each neuron may appear once per layer"
        )
    low, high = int(indices[0]), int(indices[-1])
    if low < 0 or high >= intermediate_size:
        bad = low if low < 0 else high
        raise MapFormatError(
            f"{where}: neuron index {bad} is out of range [0, {intermediate_size}) "
            f"(intermediate_size={intermediate_size})"
        )


def check_finite(values: torch.Tensor, indices: torch.Tensor, where: str) -> None:
    """Refuse NaN and infinities, naming the first neuron that has one."""
    bad = ~torch.isfinite(values)
    if bad.any():
        first = int(torch.nonzero(bad)[0])
        raise MapFormatError(
            f"{where}: non-finite value {values[first].item()} for neuron {int(indices[first])} "
            f"({int(bad.sum())} non-finite in this layer); values must be finite"
        )


def as_tensor(values: Any, dtype: torch.dtype, where: str) -> torch.Tensor:
    """Convert user input, but only between compatible kinds (ints stay ints, floats floats)."""
    tensor = torch.as_tensor(values)
    wants_float = dtype.is_floating_point
    if tensor.numel() and tensor.dtype.is_floating_point != wants_float:
        raise MapFormatError(
            f"{where} has dtype {dtype_name(tensor.dtype)}; expected "
            f"{'floating point' if wants_float else 'integer'} values"
        )
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise MapFormatError(f"{where} has dtype {dtype_name(tensor.dtype)}; expected {dtype}")
    return tensor.detach().cpu().to(dtype)


def as_tensors(
    values: Mapping[int, Any] | None, dtype: torch.dtype, where: str
) -> dict[int, torch.Tensor] | None:
    """`as_tensor` for each layer of an optional per-layer mapping."""
    if values is None:
        return None
    return {layer: as_tensor(v, dtype, f"{where}: layer {layer}") for layer, v in values.items()}


def rank_by_magnitude(layers: LayerTensors) -> dict[int, torch.Tensor]:
    """Rank all neurons by |w| descending; ties go to the lower layer, then the lower index.

    Expects validated, non-empty layers (sorted by layer, as NeuronMap keeps them).
    """
    ordered = sorted(layers.items())
    layer_of = np.concatenate(
        [np.full(w.numel(), layer, dtype=np.int64) for layer, (_, w) in ordered]
    )
    index_of = np.concatenate([i.numpy() for _, (i, _) in ordered])
    magnitude = np.concatenate([np.abs(w.numpy()) for _, (_, w) in ordered])
    order = np.lexsort((index_of, layer_of, -magnitude))  # last key is the primary key
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order), dtype=np.int64)
    ranks: dict[int, torch.Tensor] = {}
    start = 0
    for layer, (_, weights) in ordered:
        ranks[layer] = torch.from_numpy(rank_of[start : start + weights.numel()].copy())
        start += weights.numel()
    return ranks


def check_ranks(ranks: Mapping[int, torch.Tensor], total: int, who: str) -> None:
    """All ranks together must be exactly 0..total-1, so `top(n)` is well defined."""
    all_ranks = torch.sort(torch.cat(list(ranks.values()))).values
    if not torch.equal(all_ranks, torch.arange(total, dtype=torch.int64)):
        raise MapFormatError(
            f"{who}: ranks must be exactly 0..{total - 1}, one per neuron, but they are "
            f"{_describe_ranks(all_ranks)}"
        )


def _describe_ranks(sorted_ranks: torch.Tensor) -> str:
    values = sorted_ranks.tolist()
    duplicates = sorted({v for a, v in zip(values, values[1:]) if a == v})
    if duplicates:
        return f"repeating {duplicates[:5]}"
    outside = [v for v in values if not 0 <= v < len(values)]
    return f"including {outside[:5]}, outside that range"


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as messages write it: "int64", not "torch.int64"."""
    return str(dtype).removeprefix("torch.")
