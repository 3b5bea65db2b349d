"""Install the steer op on every mapped layer's ``mlp.down_proj`` of a loaded model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adaras_vllm.maps import NeuronMap

from .shard import device_of, intermediate_shard, layers_of_other_stages, require_down_projs
from .state import SteeringState
from .steer import LayerTable, SteeringTables, build_layer_table, steer_


class SteeredDownProj:
    """Mixin placed in front of a ``down_proj`` class: steer its input, then project.

    ``adaras_delta`` is this layer's columns of the shared static delta buffer (a view,
    fixed for the engine's life), a plain tensor attribute, so torch.compile turns it
    into a graph input read by reference at every call (never a constant baked in).
    """

    #: Read the activation itself: vLLM must not hand this layer fp8/fp4 data from a
    #: fused activation+quant kernel (as it does for LoRA's down_proj).
    requires_unquantized_input = True

    adaras_delta: torch.Tensor
    adaras_indices: torch.Tensor
    adaras_scratch: torch.Tensor | None  # CPU: gather-add-scatter buffer (see steer_)

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        steer_(x, self.adaras_delta, self.adaras_indices, self.adaras_scratch)
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


_mixed_classes: dict[tuple[type, type], type] = {}


def with_mixin(mixin: type, cls: type) -> type:
    """``cls`` with ``mixin`` in front (made once per pair): swapping a module's class
    keeps its parameters and vLLM's weight loading, and adds our forward step."""
    if issubclass(cls, mixin):
        return cls
    key = (mixin, cls)
    if key not in _mixed_classes:
        prefix = mixin.__name__.removesuffix("DownProj")
        _mixed_classes[key] = type(f"{prefix}{cls.__name__}", (mixin, cls), {})
    return _mixed_classes[key]


def install_steering(
    model: nn.Module,
    maps: Sequence[NeuronMap],
    model_config,  # noqa: ANN001 - a transformers PretrainedConfig (hf_text_config)
    *,
    max_tokens: int,
    dtype: torch.dtype,
) -> SteeringState:
    """Validate the maps against the model, patch each mapped layer, return the buffers.

    Maps are validated against the whole model; with pipeline parallelism each stage
    patches only the layers it owns. Raises ``MapMismatchError`` at start-up for a map
    that does not fit the model, a mapped layer that has no ``mlp.down_proj`` here, or an
    MoE MLP.
    """
    for m in maps:
        m.validate(model_config)
    mapped = {layer for m in maps for layer in m.layers} - layers_of_other_stages(model)
    downs = require_down_projs(model, mapped, lambda layer: "neuron map(s) " + ", ".join(
        m.name for m in maps if layer in m.layers) + " steer")
    layer_tables: dict[int, LayerTable] = {}
    for layer in sorted(mapped):
        start, size = intermediate_shard(downs[layer], int(model_config.intermediate_size))
        table = build_layer_table(maps, layer, start, size)
        if table is not None:
            layer_tables[layer] = table

    tables = SteeringTables.concat(layer_tables, len(maps))
    device = device_of(downs[min(downs)]) if downs else torch.device("cpu")
    state = SteeringState(max_tokens, device, tables.table, dtype)
    for layer in layer_tables:
        down = downs[layer]
        start, stop = tables.columns[layer]
        down.adaras_delta = state.delta[:, start:stop]
        down.adaras_indices = tables.indices[layer].to(device)
        # On the CPU, index_add_ in bf16/fp16 takes a slow path: gather-add-scatter
        # through a static buffer instead (bit-identical). One kernel on a GPU.
        down.adaras_scratch = (torch.zeros(max_tokens, stop - start, dtype=dtype, device=device)
                               if device.type == "cpu" else None)
        down.__class__ = with_mixin(SteeredDownProj, type(down))
    state.steered_layers = sorted(layer_tables)
    return state
