"""Engine options steering cannot follow exactly are refused at start-up, naming the option
(checked on vLLM's own config objects; the engine start-up calls the same check)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adaras_vllm.engine.support import UnsupportedSteeringConfig, check_supported


def _config(**parallel) -> SimpleNamespace:
    from vllm.config import ParallelConfig

    return SimpleNamespace(parallel_config=ParallelConfig(**parallel), speculative_config=None)


def test_the_default_parallel_config_is_supported():
    check_supported(_config())


def test_micro_batching_is_refused_naming_the_flag():
    with pytest.raises(UnsupportedSteeringConfig, match="--enable-dbo"):
        check_supported(_config(enable_dbo=True))


def test_pipeline_parallel_is_accepted_each_stage_steers_its_own_layers():
    check_supported(_config(pipeline_parallel_size=2))


def test_speculative_decoding_is_refused_naming_the_flag():
    config = _config()
    config.speculative_config = object()
    with pytest.raises(UnsupportedSteeringConfig, match="--speculative-config"):
        check_supported(config)


def test_kv_sharing_fast_prefill_is_refused_naming_the_flag():
    config = _config()
    config.cache_config = SimpleNamespace(kv_sharing_fast_prefill=True)
    with pytest.raises(UnsupportedSteeringConfig, match="--kv-sharing-fast-prefill"):
        check_supported(config)
