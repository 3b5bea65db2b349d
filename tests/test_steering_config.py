"""The steering configuration that travels in ``VllmConfig.additional_config["adaras"]``:
parsed once, checked in every process against the map files it names. No engine."""

from __future__ import annotations

import types

import pytest

from adaras_vllm.engine import registry
from adaras_vllm.engine import adoption
from adaras_vllm.engine.adoption import adopt, dp_index
from adaras_vllm.engine.params import SteeringDefaults
from adaras_vllm.engine.steering_config import (
    SteeringConfig,
    SteeringConfigError,
    carry_in,
    config_of,
)
from adaras_vllm.maps import NeuronMap


@pytest.fixture
def map_file(tmp_path):
    path = tmp_path / "first.safetensors"
    NeuronMap.from_layers("first", {0: ([1, 2], [1.0, -0.5])}, num_hidden_layers=2,
                          intermediate_size=8, hidden_size=4, default_alpha=0.3).save(path)
    return path


@pytest.fixture
def config(map_file):
    return SteeringConfig.from_spec(f"named={map_file}", SteeringDefaults(4.0, None, "off"))[0]


@pytest.fixture(autouse=True)
def _adopted_restored(monkeypatch):
    monkeypatch.setattr(registry, "_adopted", None)
    import weakref

    monkeypatch.setattr(adoption, "_adopters", weakref.WeakSet())


def _vllm_config(extra, dp=0):
    shape = types.SimpleNamespace(num_hidden_layers=2, intermediate_size=8, hidden_size=4,
                                  model_type="")
    return types.SimpleNamespace(
        additional_config=extra, parallel_config=types.SimpleNamespace(data_parallel_rank=dp),
        model_config=types.SimpleNamespace(hf_text_config=shape, model="m"))


class _Owner:  # a scheduler or worker that adopts (held by weak reference)
    pass


def test_a_config_records_the_served_name_absolute_path_and_fingerprint(config, map_file):
    (source,) = config.maps
    assert (source.name, source.path) == ("named", str(map_file.resolve()))
    assert source.fingerprint == NeuronMap.load(map_file).renamed("named").fingerprint()


def test_a_config_survives_its_json_form_unchanged(config):
    import json

    again = SteeringConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.fingerprint() == config.fingerprint()


def test_the_defaults_change_the_configuration_fingerprint(map_file):
    a = SteeringConfig.from_spec(str(map_file), SteeringDefaults(8.0))[0]
    b = SteeringConfig.from_spec(str(map_file), SteeringDefaults(4.0))[0]
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("raw, message", [
    ([], "must be an object"),
    ({"maps": []}, r"maps must be a non-empty list"),
    ({"maps": [{"name": "a", "path": "rel.safetensors", "fingerprint": "f"}]},
     r"maps\[0\]\.path must be absolute"),
    ({"maps": [{"name": "a", "path": "/x"}]}, r"maps\[0\] must have string fields"),
    ({"maps": [{"name": "a", "path": "/x", "fingerprint": "f"}], "max_alpha": "8"},
     "max_alpha must be a finite number"),
    ({"maps": [{"name": "a", "path": "/x", "fingerprint": "f"}], "default_mode": "sometimes"},
     "default_mode must be one of"),
    ({"maps": [{"name": "a", "path": "/x", "fingerprint": "f"}], "alpha": 1},
     "unknown field"),
    ({"schema": 1, "maps": [{"name": "a", "path": "/x", "fingerprint": "f"}]},
     "schema must be 2"),
])
def test_a_malformed_config_is_refused_naming_the_field(raw, message):
    with pytest.raises(SteeringConfigError, match=message):
        SteeringConfig.from_dict(raw)


def test_the_config_is_written_into_and_read_back_from_additional_config(config):
    vllm_config = _vllm_config({"other_plugin": 1})
    carry_in(vllm_config, config)
    assert vllm_config.additional_config["other_plugin"] == 1
    assert config_of(vllm_config) == config
    assert config_of(_vllm_config({})) is None


def test_a_process_adopts_the_maps_and_defaults_its_engine_carries(config):
    adopted = adopt(_vllm_config({"adaras": config.to_dict()}), "worker rank 0")
    assert adopted.names == ["named"] and adopted.defaults == config.defaults
    assert registry.active_registry() is adopted


def test_an_engine_without_steering_makes_the_process_ignore_its_environment(
        config, monkeypatch, map_file):
    monkeypatch.setenv("ADARAS_NEURON_MAPS", str(map_file))
    adopt(_vllm_config({}), "worker rank 0")
    assert not registry.active_registry()


def test_a_missing_map_file_is_refused_naming_the_process_map_and_path(config, map_file):
    map_file.unlink()
    with pytest.raises(SteeringConfigError, match=rf"worker rank 3 of DP rank 1 on node n: "
                                                  rf"neuron map 'named' is missing: no file at "
                                                  rf"{map_file}"):
        adopt(_vllm_config({"adaras": config.to_dict()}), "worker rank 3 of DP rank 1 on node n")


def test_a_map_file_that_differs_is_refused_naming_both_fingerprints(config, map_file):
    NeuronMap.load(map_file).top(1).save(map_file)  # same path, other content
    with pytest.raises(SteeringConfigError, match=r"differs from the front end's: fingerprint "
                                                  r"\w{16}, expected " + config.maps[0].fingerprint):
        adopt(_vllm_config({"adaras": config.to_dict()}), "the engine core")


def test_the_data_parallel_rank_of_a_dense_engine_is_its_index():
    assert dp_index(types.SimpleNamespace(data_parallel_rank=0, data_parallel_index=1)) == 1
    assert dp_index(types.SimpleNamespace(data_parallel_rank=2)) == 2


def test_two_front_ends_in_one_process_each_decide_with_their_own_maps(map_file, tmp_path):
    other = tmp_path / "other.safetensors"
    NeuronMap.load(map_file).renamed("other").save(other)
    front_ends = []
    for spec in (f"named={map_file}", f"other={other}"):
        config = SteeringConfig.from_spec(spec)[0]
        init = adoption._deciding_with_the_engines_maps(lambda self, vllm_config: None)
        front_end = types.SimpleNamespace()
        init(front_end, _vllm_config({"adaras": config.to_dict()}))
        front_ends.append(front_end)
    assert [registry.front_end_registry(f).names for f in front_ends] == [["named"], ["other"]]


def test_a_front_end_whose_environment_names_maps_carries_them_into_the_engine(
        map_file, monkeypatch):
    monkeypatch.setenv("ADARAS_NEURON_MAPS", f"named={map_file}")
    vllm_config = _vllm_config({})
    init = adoption._deciding_with_the_engines_maps(lambda self, vllm_config: None)
    init(types.SimpleNamespace(), vllm_config)
    assert [m.name for m in config_of(vllm_config).maps] == ["named"]


def test_a_second_engine_with_other_steering_in_the_same_process_is_refused(config):
    first = _Owner()
    adopt(_vllm_config({"adaras": config.to_dict()}), "the engine core", first)
    with pytest.raises(SteeringConfigError, match="already runs an engine that steers with "
                                                  "named"):
        adopt(_vllm_config({}), "the engine core", _Owner())
    worker = _Owner()
    adopt(_vllm_config({"adaras": config.to_dict()}), "a worker", worker)  # same: fine
    del first, worker
    import gc

    gc.collect()
    assert not adopt(_vllm_config({}), "the engine core", _Owner())  # the first is gone


def test_the_default_mode_may_defer_to_each_maps_own_and_round_trips():
    raw = {"maps": [{"name": "a", "path": "/x", "fingerprint": "f"}]}
    config = SteeringConfig.from_dict(raw)  # absent: each map's default_mode
    assert config.defaults.default_mode is None
    assert config.to_dict()["default_mode"] == "map"
    assert SteeringConfig.from_dict(config.to_dict()) == config
    explicit = SteeringConfig.from_dict({**raw, "default_mode": "always"})
    assert explicit.defaults.default_mode == "always"
