"""Each engine option steering cannot honour is refused naming the CLI option (stand-in
configs, no engine), and a model with two towers of ``layers.N.mlp.down_proj`` is refused
naming both module paths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from adaras_vllm.engine.shard import find_mlps
from adaras_vllm.engine.support import (
    UnsupportedSteeringConfig,
    check_supported,
    unsupported_reasons,
)


def _model(**overrides) -> SimpleNamespace:
    fields = dict(runner_type="generate", is_encoder_decoder=False, is_diffusion=False,
                  using_transformers_backend=lambda: False)
    return SimpleNamespace(**{**fields, **overrides})


def _config(**overrides) -> SimpleNamespace:
    fields = dict(
        parallel_config=SimpleNamespace(use_ubatching=False, prefill_context_parallel_size=1),
        cache_config=SimpleNamespace(kv_sharing_fast_prefill=False),
        speculative_config=None, kv_transfer_config=None, lora_config=None,
        diffusion_config=None, model_config=_model(),
        scheduler_config=SimpleNamespace(scheduler_cls=None),
    )
    return SimpleNamespace(**{**fields, **overrides})


def _refused(config: SimpleNamespace, option: str) -> None:
    with pytest.raises(UnsupportedSteeringConfig, match=option):
        check_supported(config)
    assert len(unsupported_reasons(config)) == 1


def test_a_plain_generation_config_is_supported():
    check_supported(_config())


def test_a_config_without_the_newer_fields_is_supported():
    check_supported(SimpleNamespace(speculative_config=None))


def test_kv_connectors_and_offloading_are_refused_naming_the_flags():
    config = _config(kv_transfer_config=SimpleNamespace(kv_connector="OffloadingConnector"))
    _refused(config, "--kv-transfer-config")
    assert "--kv-offloading-size" in unsupported_reasons(config)[0]


def test_lora_is_refused_naming_the_flag():
    _refused(_config(lora_config=SimpleNamespace(max_lora_rank=16)), "--enable-lora")


def test_the_transformers_modelling_backend_is_refused_naming_the_flag():
    config = _config(model_config=_model(using_transformers_backend=lambda: True))
    _refused(config, "--model-impl transformers")


def test_a_pooling_runner_is_refused_naming_the_flag():
    _refused(_config(model_config=_model(runner_type="pooling")), "--runner pooling")


def test_an_encoder_decoder_model_is_refused():
    _refused(_config(model_config=_model(is_encoder_decoder=True)), "encoder-decoder")


def test_a_diffusion_config_is_refused_naming_the_flag():
    _refused(_config(diffusion_config=SimpleNamespace(canvas_length=64)), "--diffusion-config")


def test_a_diffusion_checkpoint_is_refused_once():
    _refused(_config(model_config=_model(is_diffusion=True)), "--diffusion-config")
    both = _config(diffusion_config=SimpleNamespace(canvas_length=64),
                   model_config=_model(is_diffusion=True))
    _refused(both, "--diffusion-config")


def test_prefill_context_parallel_is_refused_naming_the_flag():
    parallel = SimpleNamespace(use_ubatching=False, prefill_context_parallel_size=2)
    _refused(_config(parallel_config=parallel), "--prefill-context-parallel-size")


def test_prefill_context_parallel_is_read_from_vllms_parallel_config():
    from vllm.config import ParallelConfig

    assert ParallelConfig().prefill_context_parallel_size == 1
    check_supported(_config(parallel_config=ParallelConfig()))


class _NotAScheduler:
    pass


def test_a_scheduler_cls_outside_vllms_scheduler_is_refused_naming_the_flag():
    _refused(_config(scheduler_config=SimpleNamespace(scheduler_cls=_NotAScheduler)),
             "--scheduler-cls")
    qualname = f"{__name__}._NotAScheduler"
    _refused(_config(scheduler_config=SimpleNamespace(scheduler_cls=qualname)),
             "--scheduler-cls")


def test_vllms_own_schedulers_and_their_subclasses_are_accepted():
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    class Custom(AsyncScheduler):
        pass

    for cls in (Custom, "vllm.v1.core.sched.async_scheduler.AsyncScheduler",
                "vllm.v1.core.sched.scheduler.Scheduler"):
        check_supported(_config(scheduler_config=SimpleNamespace(scheduler_cls=cls)))


def test_the_default_scheduler_config_is_accepted():
    from vllm.config import SchedulerConfig

    check_supported(_config(scheduler_config=SchedulerConfig.default_factory()))


def _tower(n: int) -> nn.ModuleList:
    return nn.ModuleList(nn.ModuleDict({"mlp": nn.ModuleDict({"down_proj": nn.Linear(4, 2)})})
                         for _ in range(n))


def test_two_down_projs_at_one_layer_index_are_refused_naming_both_paths():
    model = nn.ModuleDict({
        "vision_tower": nn.ModuleDict({"layers": _tower(1)}),
        "language_model": nn.ModuleDict({"layers": _tower(2)}),
    })
    with pytest.raises(ValueError, match="vision_tower.layers.0.mlp.down_proj") as err:
        find_mlps(model)
    assert "language_model.layers.0.mlp.down_proj" in str(err.value)


def test_one_tower_of_down_projs_is_found_by_layer_index():
    model = nn.ModuleDict({"model": nn.ModuleDict({"layers": _tower(3)})})
    mlps, downs = find_mlps(model)
    assert sorted(downs) == sorted(mlps) == [0, 1, 2]
    assert downs[1] is model["model"]["layers"][1]["mlp"]["down_proj"]
