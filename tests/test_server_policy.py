"""How the server turns steering fields into engine parameters (no server needed)."""

from __future__ import annotations

import pytest

from adaras_vllm.maps import NeuronMap
from server.steering_fields import SteeringFieldError, SteeringPolicy


def _map(name: str, default_alpha: float) -> NeuronMap:
    return NeuronMap.from_layers(name, {0: ([1], [1.0])}, num_hidden_layers=2,
                                 intermediate_size=8, hidden_size=4, default_alpha=default_alpha)


MAPS = [_map("first", 0.3), _map("second", 0.2)]


def resolve(body, **policy):
    return SteeringPolicy(MAPS, max_alpha=policy.pop("max_alpha", 8.0), **policy).resolve(body)


def test_absent_alpha_takes_the_chosen_maps_default_alpha():
    assert resolve({})[1].alpha == 0.3
    assert resolve({"steer_map": "second"})[1].alpha == 0.2


def test_the_operators_default_alpha_overrides_the_maps():
    assert resolve({"steer_map": "second"}, default_alpha=0.0)[1].alpha == 0.0


def test_null_fields_mean_absent():
    body, applied = resolve({"steer_alpha": None, "steer_map": None})
    assert (applied.map, applied.alpha) == ("first", 0.3)


def test_resolved_values_travel_in_vllm_xargs_and_top_level_fields_are_removed():
    body, _ = resolve({"prompt": "x", "steer_alpha": -1, "vllm_xargs": {"other": 1}})
    assert body == {"prompt": "x", "vllm_xargs": {"other": 1, "steer_alpha": -1.0,
                                                   "steer_map": "first"}}


def test_the_same_value_in_both_places_is_accepted():
    assert resolve({"steer_alpha": 0.5, "vllm_xargs": {"steer_alpha": 0.5}})[1].alpha == 0.5


def test_different_values_in_both_places_are_refused():
    with pytest.raises(SteeringFieldError, match="given both as a field"):
        resolve({"steer_alpha": 0.5, "vllm_xargs": {"steer_alpha": 0.6}})


def test_mode_off_reports_not_applied():
    _, applied = resolve({"steer_alpha": 2.0, "steer_mode": "off"})
    assert (applied.alpha, applied.applied, applied.mode) == (0.0, False, "off")


def test_alpha_beyond_the_operator_bound_is_refused_naming_the_bound():
    with pytest.raises(SteeringFieldError, match=r"\[-1, 1\], got 1.5") as e:
        resolve({"steer_alpha": 1.5}, max_alpha=1.0)
    assert e.value.field == "steer_alpha"


def test_adaptive_mode_is_refused_until_a_gate_exists():
    with pytest.raises(SteeringFieldError, match="needs a correctness gate"):
        resolve({"steer_mode": "adaptive"})


def test_the_request_body_given_is_not_mutated():
    body = {"steer_alpha": 1.0, "vllm_xargs": {"a": 1}}
    resolve(body)
    assert body == {"steer_alpha": 1.0, "vllm_xargs": {"a": 1}}
