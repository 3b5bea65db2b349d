"""vLLM's compile-cache key must change with the steering an engine carries, so a graph
traced without the steer op (or for other maps) is never loaded for a steered engine.
The maps travel in ``additional_config``, which ``VllmConfig.compute_hash`` covers."""

from __future__ import annotations

import pytest
from conftest import ENV_VAR, map_spec

pytestmark = pytest.mark.engine  # builds a real VllmConfig (imports vLLM)


def _config(model_dir, monkeypatch, spec: str):
    from vllm.engine.arg_utils import EngineArgs

    from adaras_vllm.engine.plugin import register

    monkeypatch.setenv(ENV_VAR, spec)
    register()
    args = EngineArgs(model=str(model_dir), dtype="float32", max_model_len=512)
    return args.create_engine_config()


def _aot_key(cfg) -> list[str]:
    from vllm.compilation.caching import aot_compile_hash_factors

    return aot_compile_hash_factors(cfg)


def test_compile_cache_key_differs_with_and_without_maps(qwen3_tiny, monkeypatch):
    model_dir, maps = qwen3_tiny
    steered = _config(model_dir, monkeypatch, map_spec(maps))
    plain = _config(model_dir, monkeypatch, "")
    assert "adaras" in steered.additional_config and "adaras" not in plain.additional_config
    assert steered.compute_hash() != plain.compute_hash()
    assert _aot_key(steered) != _aot_key(plain)


def test_compile_cache_key_differs_between_map_sets(qwen3_tiny, monkeypatch):
    model_dir, maps = qwen3_tiny
    both = _config(model_dir, monkeypatch, map_spec(maps)).compute_hash()
    one = _config(model_dir, monkeypatch, map_spec({"alpha_map": maps["alpha_map"]}))
    assert both != one.compute_hash()


def test_compile_cache_key_is_stable_for_the_same_maps(qwen3_tiny, monkeypatch):
    model_dir, maps = qwen3_tiny
    first = _config(model_dir, monkeypatch, map_spec(maps)).compute_hash()
    again = _config(model_dir, monkeypatch, map_spec(maps))
    assert first == again.compute_hash() == again.compute_hash()
