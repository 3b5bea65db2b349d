"""How a request's steering is decided: the one function every route and entry point uses
(``MapRegistry.parse``, called by the engine front end and, for early 400s, by the HTTP
layer). No engine needed."""

from __future__ import annotations

import pytest

from adaras_vllm.engine.params import SteeringDefaults, SteeringParamError
from adaras_vllm.engine.registry import MapRegistry
from adaras_vllm.maps import NeuronMap


def _map(name: str, default_alpha: float) -> NeuronMap:
    return NeuronMap.from_layers(name, {0: ([1], [1.0])}, num_hidden_layers=2,
                                 intermediate_size=8, hidden_size=4, default_alpha=default_alpha)


def _registry(**defaults) -> MapRegistry:
    return MapRegistry([_map("first", 0.3), _map("second", 0.2)], SteeringDefaults(**defaults))


@pytest.fixture
def registry():
    return _registry()


def test_defaults_are_read_from_the_operators_environment(monkeypatch):
    monkeypatch.setenv("ADARAS_DEFAULT_STEER_ALPHA", "map")
    monkeypatch.setenv("ADARAS_MAX_STEER_ALPHA", "2")
    monkeypatch.setenv("ADARAS_DEFAULT_STEER_MODE", "off")
    assert SteeringDefaults.from_env() == SteeringDefaults(2.0, None, "off")


def test_without_an_operator_default_absent_alpha_means_unsteered(registry):
    d = registry.parse({})
    assert (d.alpha, d.map_name, d.mode, d.steered) == (0.0, "first", "always", False)


def test_operator_default_map_takes_the_chosen_maps_default_alpha():
    registry = _registry(default_alpha=None)
    assert registry.parse({}).alpha == 0.3
    assert registry.parse({"steer_map": "second"}).alpha == 0.2


def test_operator_default_number_overrides_the_maps():
    registry = _registry(default_alpha=0.0)
    assert registry.parse({"steer_map": "second"}).alpha == 0.0


def test_an_explicit_alpha_wins_over_every_default():
    registry = _registry(default_alpha=None)
    assert registry.parse({"steer_alpha": -1}).alpha == -1.0


def test_top_level_fields_and_vllm_xargs_mean_the_same(registry):
    assert registry.parse({}, {"steer_alpha": 0.5}) == registry.parse({"steer_alpha": 0.5})


def test_the_same_value_in_both_places_is_accepted(registry):
    assert registry.parse({"steer_alpha": 0.5}, {"steer_alpha": 0.5}).alpha == 0.5


def test_different_values_in_both_places_are_refused(registry):
    with pytest.raises(SteeringParamError, match="given both as a field") as e:
        registry.parse({"steer_alpha": 0.6}, {"steer_alpha": 0.5})
    assert e.value.field == "steer_alpha"


def test_mode_off_is_resolved_to_alpha_zero(registry):
    d = registry.parse({"steer_alpha": 2.0, "steer_mode": "off"})
    assert (d.alpha, d.steered, d.mode) == (0.0, False, "off")


def test_resolved_values_decide_the_same_again():
    """The front end writes its decision into extra_args; engine processes re-read it."""
    registry = _registry(default_alpha=None)
    for asked in ({}, {"steer_map": "second"}, {"steer_alpha": 2, "steer_mode": "off"}):
        d = registry.parse(asked)
        assert registry.parse(d.as_extra_args()) == d


def test_alpha_beyond_the_operator_bound_is_refused_naming_the_bound():
    registry = _registry(max_alpha=1.0)
    with pytest.raises(SteeringParamError, match=r"\[-1, 1\], got 1.5") as e:
        registry.parse({"steer_alpha": 1.5})
    assert e.value.field == "steer_alpha"


def test_an_integer_alpha_too_large_for_a_float_is_refused_naming_the_field(registry):
    with pytest.raises(SteeringParamError, match="steer_alpha must be a finite number") as e:
        registry.parse({"steer_alpha": 10 ** 400})
    assert e.value.field == "steer_alpha"


def test_an_integer_alpha_past_the_digit_limit_is_refused_with_a_short_message(registry):
    with pytest.raises(SteeringParamError, match="an integer of more than") as e:
        registry.parse({"steer_alpha": 10 ** 5000})
    assert len(str(e.value)) < 200


def test_a_misspelt_key_in_another_letter_case_is_refused(registry):
    with pytest.raises(SteeringParamError, match="unknown steering field") as e:
        registry.parse({"Steer_Alpha": 1.0})
    assert e.value.field == "Steer_Alpha"


def test_a_long_unknown_map_name_is_cut_in_the_message(registry):
    with pytest.raises(SteeringParamError, match=r"\(3000 characters\)"):
        registry.parse({"steer_map": "m" * 2998})


def test_adaptive_mode_on_a_map_without_a_gate_is_refused_naming_steer_mode(registry):
    with pytest.raises(SteeringParamError, match="needs a map with a correctness gate") as e:
        registry.parse({"steer_mode": "adaptive"})
    assert e.value.field == "steer_mode"


def test_without_the_default_a_request_that_gives_no_alpha_is_unsteered():
    registry = _registry(default_alpha=None)
    assert not registry.parse({}, use_default=False).steered


def test_a_map_default_above_the_bound_is_refused_at_start_up():
    registry = MapRegistry([_map("strong", 2.0)], SteeringDefaults(1.0, None))
    with pytest.raises(SteeringParamError,
                       match="map 'strong' default_alpha 2 exceeds the bound 1"):
        registry.check_defaults()


def test_an_operator_default_above_the_bound_is_refused_at_start_up():
    with pytest.raises(SteeringParamError, match="the default steer_alpha 3 exceeds"):
        MapRegistry([_map("m", 0.1)], SteeringDefaults(1.0, 3.0)).check_defaults()


@pytest.fixture
def gated_registry():
    from adaras_vllm.maps.gate_file import random_gate

    gate = random_gate(3, 2, num_hidden_layers=2, intermediate_size=8)
    return MapRegistry([_map("first", 0.3), _map("gated", 0.2).with_gate(gate)])


def test_adaptive_mode_on_a_map_with_a_gate_is_gated(gated_registry):
    d = gated_registry.parse({"steer_mode": "adaptive", "steer_map": "gated",
                              "steer_alpha": 0.5})
    assert (d.mode, d.steered, d.gated) == ("adaptive", True, True)


def test_the_refusal_names_the_maps_that_have_a_gate(gated_registry):
    with pytest.raises(SteeringParamError, match="maps with a gate: gated"):
        gated_registry.parse({"steer_mode": "adaptive", "steer_map": "first"})


def test_adaptive_with_alpha_zero_has_nothing_to_gate(gated_registry):
    d = gated_registry.parse({"steer_mode": "adaptive", "steer_map": "gated"})
    assert d.mode == "adaptive" and not d.gated


def test_the_operators_default_mode_applies_when_a_request_gives_none(gated_registry):
    gated_registry.defaults = SteeringDefaults(default_mode="adaptive")
    assert gated_registry.parse({"steer_map": "gated", "steer_alpha": 1}).gated
    assert gated_registry.parse({"steer_map": "gated", "steer_alpha": 1,
                                 "steer_mode": "always"}).mode == "always"


def test_a_default_adaptive_mode_needs_a_gate_on_the_default_map(gated_registry):
    gated_registry.defaults = SteeringDefaults(default_mode="adaptive")
    with pytest.raises(SteeringParamError, match="default map 'first' has no correctness gate"):
        gated_registry.check_defaults()


@pytest.mark.parametrize("extra, skips", [
    ({"steer_mode": "adaptive", "steer_map": "gated", "steer_alpha": 0.5}, True),
    ({"steer_mode": "always", "steer_map": "gated", "steer_alpha": 0.5}, False),
    ({"steer_mode": "adaptive", "steer_map": "gated"}, False),  # alpha 0: nothing to gate
], ids=["adaptive", "always", "adaptive-alpha-0"])
def test_the_scheduler_keeps_adaptive_requests_off_the_prefix_cache(
        gated_registry, monkeypatch, extra, skips):
    """Whatever the front end asked: a process whose plugins loaded before the maps were
    set once sent adaptive requests through the cache, and their gates scored a suffix."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    from adaras_vllm.engine import registry
    from adaras_vllm.engine.scheduler_trim import keep_gated_off_the_prefix_cache

    monkeypatch.setattr(registry, "_adopted", gated_registry)  # as the engine core adopts
    request = Request("r", [1, 2, 3], SamplingParams(extra_args=extra), None)
    assert request.skip_reading_prefix_cache is False  # as an unpatched front end leaves it
    keep_gated_off_the_prefix_cache(request)
    assert request.skip_reading_prefix_cache is skips


def test_positions_default_to_the_papers_rule():
    assert _registry().parse({"steer_alpha": 1}).positions == "from_last_prompt"


def test_a_maps_default_positions_apply_when_the_request_gives_none(tmp_path):
    m = NeuronMap.from_layers("late", {0: ([1], [1.0])}, num_hidden_layers=2,
                              intermediate_size=8, hidden_size=4,
                              extra_metadata={"default_positions": "generated"})
    path = tmp_path / "late.safetensors"
    m.save(path)
    registry = MapRegistry([NeuronMap.load(path)])
    assert registry.parse({"steer_alpha": 1}).positions == "generated"
    assert registry.parse({"steer_alpha": 1, "steer_positions": "last_prompt"}).positions \
        == "last_prompt"
    operator = MapRegistry([NeuronMap.load(path)], SteeringDefaults(default_positions="last_prompt"))
    assert operator.parse({"steer_alpha": 1}).positions == "last_prompt"


def test_a_map_with_unknown_default_positions_is_refused():
    from adaras_vllm.maps.errors import MapFormatError

    with pytest.raises(MapFormatError, match="default_positions is 'sometimes'; expected one "
                                             "of from_last_prompt, last_prompt, generated"):
        NeuronMap.from_layers("bad", {0: ([1], [1.0])}, num_hidden_layers=2,
                              intermediate_size=8, hidden_size=4,
                              extra_metadata={"default_positions": "sometimes"})


@pytest.mark.parametrize("bad", ["decode", 3, None, ["generated"]])
def test_an_unknown_positions_value_is_refused_naming_the_field(registry, bad):
    with pytest.raises(SteeringParamError, match="steer_positions must be one of") as e:
        registry.parse({"steer_alpha": 1, "steer_positions": bad})
    assert e.value.field == "steer_positions"


def _gated_map_recommending(mode: str) -> NeuronMap:
    from adaras_vllm.maps.gate_file import random_gate

    gate = random_gate(3, 2, num_hidden_layers=2, intermediate_size=8)
    return _map("calibrated", 0.5).with_gate(gate).with_metadata({"default_mode": mode})


def test_a_maps_default_mode_applies_when_neither_request_nor_operator_names_one():
    registry = MapRegistry([_gated_map_recommending("adaptive")],
                           SteeringDefaults(default_alpha=None, default_mode=None))
    assert registry.parse({}).mode == "adaptive"
    assert registry.parse({"steer_mode": "always"}).mode == "always"


def test_the_operators_default_mode_overrides_the_maps():
    registry = MapRegistry([_gated_map_recommending("adaptive")],
                           SteeringDefaults(default_alpha=None, default_mode="always"))
    assert registry.parse({}).mode == "always"


def test_a_map_recommending_adaptive_without_a_gate_is_refused():
    from adaras_vllm.maps.errors import MapFormatError

    with pytest.raises(MapFormatError, match="default_mode is 'adaptive' but the map has no "
                                             "correctness gate"):
        _map("ungated", 0.5).with_metadata({"default_mode": "adaptive"})


@pytest.mark.parametrize("bad", ["off", "sometimes"])
def test_a_map_default_mode_other_than_always_or_adaptive_is_refused(bad):
    from adaras_vllm.maps.errors import MapFormatError

    with pytest.raises(MapFormatError, match=f"default_mode is '{bad}'; expected one of "
                                             "always, adaptive"):
        _map("odd", 0.5).with_metadata({"default_mode": bad})


def test_the_environment_can_defer_the_default_mode_to_the_map(monkeypatch):
    monkeypatch.setenv("ADARAS_DEFAULT_STEER_MODE", "map")
    assert SteeringDefaults.from_env().default_mode is None
