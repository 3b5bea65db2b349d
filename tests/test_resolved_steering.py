"""What the engine reads of a request: the record the front end resolved, no default of
its own, never a failure that takes the batch down. Fast: no engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adaras_vllm.engine.resolved import GATE_KEY, ResolvedSteering, resolved_of

MAPS = ["first", "gated"]
GATED = ["gated"]


def _read(**extra) -> ResolvedSteering:
    return ResolvedSteering.from_extra_args(extra, MAPS, GATED)


def test_a_resolved_record_is_read_as_written():
    r = _read(steer_alpha=-2.5, steer_map="gated", steer_mode="adaptive", **{GATE_KEY: "t"})
    assert (r.alpha, r.map_name, r.map_id, r.mode, r.gate_key) == (-2.5, "gated", 1,
                                                                    "adaptive", "t")
    assert r.steered and r.gated


def test_no_operator_default_is_applied_in_the_engine(monkeypatch):
    monkeypatch.setenv("ADARAS_DEFAULT_STEER_ALPHA", "3")
    r = _read()
    assert (r.alpha, r.map_name, r.mode) == (0.0, "first", "always") and not r.steered


def test_mode_off_is_unsteered_whatever_the_alpha():
    assert _read(steer_alpha=4.0, steer_mode="off").alpha == 0.0


@pytest.mark.parametrize("extra", [
    {"steer_alpha": "2"}, {"steer_alpha": True}, {"steer_alpha": float("nan")},
    {"steer_alpha": 10 ** 400}, {"steer_map": "nope", "steer_alpha": 1.0},
    {"steer_mode": "sometimes", "steer_alpha": 1.0},
    {"steer_mode": "adaptive", "steer_map": "first", "steer_alpha": 1.0},
], ids=["string", "bool", "nan", "huge-int", "unknown-map", "unknown-mode", "gateless-map"])
def test_a_malformed_record_is_left_unsteered_without_raising(extra):
    assert not ResolvedSteering.from_extra_args(extra, MAPS, GATED).steered


def test_an_empty_gate_tag_is_kept_as_given():
    r = _read(steer_alpha=1.0, steer_map="gated", steer_mode="adaptive", **{GATE_KEY: ""})
    assert r.gate_key == ""


def test_a_request_keeps_its_record_until_its_parameters_are_replaced():
    """A streaming-input session swaps each chunk's parameters into the same Request."""
    request = SimpleNamespace(sampling_params=SimpleNamespace(extra_args={"steer_alpha": 0.0}))
    assert not resolved_of(request, MAPS, GATED).steered
    request.sampling_params.extra_args = {"steer_alpha": 9.0}  # same object: cached record
    assert not resolved_of(request, MAPS, GATED).steered
    request.sampling_params = SimpleNamespace(extra_args={"steer_alpha": 1.5})
    assert resolved_of(request, MAPS, GATED).alpha == 1.5
