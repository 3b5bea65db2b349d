"""Where a model's MLPs are, and which intermediate columns this rank's ``down_proj`` holds.

Steering, the gate and capture all index the ``down_proj`` input by neuron. Under tensor
parallelism that input is already this rank's shard (``RowParallelLinear``): rank ``r``
holds columns ``[r * I / tp, (r + 1) * I / tp)``, so every global index is re-based here,
in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from adaras_vllm.maps import MapMismatchError

_DOWN_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.down_proj$")
_MLP = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)$")


def find_mlps(model: nn.Module) -> tuple[dict[int, nn.Module], dict[int, nn.Module]]:
    """``layers.N.mlp`` and ``layers.N.mlp.down_proj`` modules by layer index.

    ``ValueError`` when two ``down_proj`` share a layer index (a vision tower's
    ``layers.N.mlp.down_proj`` beside the language model's): steering would land on one
    of them silently."""
    mlps: dict[int, nn.Module] = {}
    downs: dict[int, nn.Module] = {}
    down_names: dict[int, str] = {}
    for name, mod in model.named_modules():
        if (m := _DOWN_PROJ.search(name)) is not None:
            layer = int(m.group(1))
            if layer in down_names:
                raise ValueError(
                    f"two modules are layer {layer}'s down_proj: {down_names[layer]!r} and "
                    f"{name!r}; steering cannot tell which one a map means (a model with "
                    "another tower of layers.N.mlp.down_proj is not supported)"
                )
            down_names[layer] = name
            downs[layer] = mod
        elif (m := _MLP.search(name)) is not None:
            mlps[int(m.group(1))] = mod
    return mlps, downs


def layers_of_other_stages(model: nn.Module) -> set[int]:
    """Decoder layers another pipeline stage owns: vLLM leaves a ``PPMissingLayer`` here."""
    return {int(m.group(1)) for name, mod in model.named_modules()
            if type(mod).__name__ == "PPMissingLayer" and (m := _LAYER.search(name))}


def require_down_projs(model: nn.Module, layers: Iterable[int],
                       who: Callable[[int], str]) -> dict[int, nn.Module]:
    """The ``down_proj`` of each of ``layers``, for all of them; ``MapMismatchError``
    naming the first layer that has none (an MoE MLP says so) and ``who(layer)``, what
    wanted it ("neuron map(s) a, b steer")."""
    mlps, downs = find_mlps(model)
    for layer in sorted(set(layers)):
        if layer in downs:
            continue
        mlp = mlps.get(layer)
        if mlp is not None and hasattr(mlp, "experts"):
            raise MapMismatchError(
                f"layer {layer} has a mixture-of-experts MLP ({type(mlp).__name__}); "
                "steering MoE MLPs is not supported"
            )
        found = f"layers {min(downs)}..{max(downs)}" if downs else "none at all"
        raise MapMismatchError(
            f"{who(layer)} layer {layer}, but the model has no "
            f"layers.{layer}.mlp.down_proj (found {found})"
        )
    return downs


def intermediate_shard(down_proj: nn.Module, full_size: int | None = None) -> tuple[int, int]:
    """(first column, number of columns) of the intermediate dim this rank's
    ``down_proj`` receives; ``full_size`` None: read from the layer itself."""
    local = getattr(down_proj, "input_size_per_partition", None)
    if local is None:
        width = int(down_proj.weight.shape[1]) if full_size is None else full_size
        return 0, width
    local = int(local)
    if full_size is not None and local == full_size:
        return 0, local
    return int(getattr(down_proj, "tp_rank", 0) or 0) * local, local


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
