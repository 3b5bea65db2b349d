"""vLLM's compile-cache key must change when steering is patched in (and with the maps),
so a graph traced without the steer op is never loaded for a steered engine."""

from __future__ import annotations

import pytest
from conftest import ENV_VAR, map_spec

pytestmark = pytest.mark.engine  # builds a real VllmConfig (imports vLLM)


@pytest.fixture(scope="module")
def vllm_config(qwen3_tiny):
    from vllm.engine.arg_utils import EngineArgs

    from adaras_vllm.engine.plugin import register

    model_dir, maps = qwen3_tiny
    import os

    os.environ[ENV_VAR] = map_spec(maps)
    register()
    args = EngineArgs(model=str(model_dir), dtype="float32", max_model_len=512)
    return args.create_engine_config()


def _aot_key(cfg) -> list[str]:
    from vllm.compilation.caching import aot_compile_hash_factors

    return aot_compile_hash_factors(cfg)


def test_compile_cache_key_differs_with_and_without_the_plugin(vllm_config, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    plain = (vllm_config.compute_hash(), _aot_key(vllm_config))
    monkeypatch.undo()
    steered = (vllm_config.compute_hash(), _aot_key(vllm_config))
    assert plain[0] != steered[0]
    assert plain[1] != steered[1]


def test_compile_cache_key_differs_between_map_sets(vllm_config, qwen3_tiny, monkeypatch):
    _, maps = qwen3_tiny
    both = vllm_config.compute_hash()
    monkeypatch.setenv(ENV_VAR, map_spec({"alpha_map": maps["alpha_map"]}))
    one = vllm_config.compute_hash()
    assert both != one


def test_compile_cache_key_is_stable_for_the_same_maps(vllm_config):
    assert vllm_config.compute_hash() == vllm_config.compute_hash()
