"""Maps that do not fit the model are refused when the engine starts, with the reason."""

from __future__ import annotations

import pytest
import torch
from conftest import ENV_VAR, map_spec, tiny_model

from adaras_vllm.engine.model_patch import install_steering
from adaras_vllm.maps import MapMismatchError, NeuronMap


def _hf(arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir, _ = tiny_model(arch)
    cfg = AutoConfig.from_pretrained(str(model_dir))
    return AutoModelForCausalLM.from_pretrained(str(model_dir)), cfg


def _map_for(cfg, layers, **over) -> NeuronMap:
    shape = dict(num_hidden_layers=cfg.num_hidden_layers, intermediate_size=cfg.intermediate_size,
                 hidden_size=cfg.hidden_size, model_type=cfg.model_type)
    shape.update(over)
    return NeuronMap.from_layers("m", {i: ([0, 5], [1.0, -1.0]) for i in layers}, **shape)


def test_every_mapped_down_proj_is_patched_and_others_are_not():
    model, cfg = _hf("qwen3")
    install_steering(model, [_map_for(cfg, [1, 3])], cfg, max_tokens=8, dtype=torch.float32)
    patched = [i for i, layer in enumerate(model.model.layers)
               if type(layer.mlp.down_proj).__name__.startswith("Steered")]
    assert patched == [1, 3]


def test_installing_twice_patches_once():
    model, cfg = _hf("llama")
    m = _map_for(cfg, [2])
    install_steering(model, [m], cfg, max_tokens=8, dtype=torch.float32)
    cls = type(model.model.layers[2].mlp.down_proj)
    install_steering(model, [m], cfg, max_tokens=8, dtype=torch.float32)
    assert type(model.model.layers[2].mlp.down_proj) is cls


def test_a_map_for_another_shape_is_refused():
    model, cfg = _hf("qwen3")
    m = _map_for(cfg, [1], intermediate_size=cfg.intermediate_size * 2)
    with pytest.raises(MapMismatchError, match="intermediate_size"):
        install_steering(model, [m], cfg, max_tokens=8, dtype=torch.float32)


def test_a_map_naming_a_layer_the_model_lacks_is_refused():
    model, cfg = _hf("qwen3")
    del model.model.layers[3]  # e.g. a pruned model
    message = r"steer layer 3, but the model has no layers.3.mlp.down_proj"
    with pytest.raises(MapMismatchError, match=message):
        install_steering(model, [_map_for(cfg, [3])], cfg, max_tokens=8, dtype=torch.float32)


def test_mixture_of_experts_models_are_refused():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("qwen3_moe", num_hidden_layers=2, hidden_size=64,
                               intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                               num_attention_heads=1, num_key_value_heads=1, head_dim=64,
                               vocab_size=64)
    m = _map_for(cfg, [0])
    with pytest.raises(MapMismatchError, match="(?i)mixture-of-experts|MoE"):
        install_steering(torch.nn.Module(), [m], cfg, max_tokens=8, dtype=torch.float32)


@pytest.mark.engine
def test_vllm_refuses_to_start_with_a_map_for_another_model(qwen3_tiny, monkeypatch):
    from vllm import LLM

    _, llama_maps = tiny_model("llama")  # same shapes, other model_type
    model_dir, _ = qwen3_tiny
    monkeypatch.setenv(ENV_VAR, map_spec(llama_maps))
    with pytest.raises(MapMismatchError, match="model_type is 'llama' but the model has 'qwen3'"):
        LLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=256)


def test_a_pipeline_stage_patches_only_the_layers_it_owns():
    """vLLM leaves a PPMissingLayer where another stage owns the layer: that is not a map
    mismatch, and only this stage's mapped layers are patched."""
    from vllm.model_executor.models.utils import PPMissingLayer

    model, cfg = _hf("qwen3")
    model.model.layers[1] = PPMissingLayer()  # owned by the other stage
    state = install_steering(model, [_map_for(cfg, [1, 3])], cfg, max_tokens=8,
                             dtype=torch.float32)
    assert state.steered_layers == [3]
    assert type(model.model.layers[3].mlp.down_proj).__name__.startswith("Steered")
