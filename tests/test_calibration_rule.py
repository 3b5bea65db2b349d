"""The calibration's grid and its pre-registered rule (adaras_vllm.evaluate.calibration),
on hand-made grid results: no engine needed."""

from __future__ import annotations

import pytest

from adaras_vllm.evaluate.calibration import CalibrationRule, Grid, decide
from adaras_vllm.evaluate.runner import Setting
from adaras_vllm.evaluate.summary import SettingSummary
from adaras_vllm.pipeline.stats import mcnemar_exact

N = 500
OFF_RIGHT = 200


def _cell(correct: int, r2w: int, alpha: float = -4.0, neurons: int = 25,
          mode: str = "always", positions: str = "last_prompt") -> SettingSummary:
    w2r = correct - OFF_RIGHT + r2w
    return SettingSummary(
        steer_map=f"top{neurons}", alpha=alpha, n=N, correct=correct, accuracy=correct / N,
        ci95=(0.0, 1.0), right_to_wrong=r2w, wrong_to_right=w2r,
        mcnemar_p=mcnemar_exact(r2w, w2r), mean_completion_tokens=40.0, mode=mode,
        positions=positions)


OFF = SettingSummary(steer_map=None, alpha=0.0, n=N, correct=OFF_RIGHT, accuracy=OFF_RIGHT / N,
                     ci95=(0.0, 1.0), right_to_wrong=0, wrong_to_right=0, mcnemar_p=1.0,
                     mean_completion_tokens=40.0, mode="off")


def test_the_most_accurate_qualifying_setting_is_chosen():
    best = _cell(300, 2, alpha=-4.0)
    result = decide([OFF, _cell(260, 1, alpha=-1.0), best], CalibrationRule())
    assert result.chosen is best
    assert result.recommendation == {"steer": True, "default_alpha": -4.0,
                                     "default_positions": "last_prompt",
                                     "default_mode": "always", "neurons": 25}


def test_a_setting_that_breaks_more_than_the_share_of_right_answers_is_passed_over():
    breaks_many = _cell(320, 58)  # 58 > 0.05 x 200
    careful = _cell(300, 2)
    result = decide([OFF, breaks_many, careful], CalibrationRule())
    assert result.chosen is careful
    assert dict((id(c), why) for c, why in result.cells)[id(breaks_many)].startswith(
        "right->wrong 58 > 0.05 x 200")


def test_a_change_that_is_not_significant_does_not_qualify():
    noise = _cell(205, 1)  # 1 broken, 6 fixed: McNemar p 0.125
    result = decide([OFF, noise], CalibrationRule())
    assert result.chosen is None
    assert result.cells[0][1].startswith("McNemar p 0.125 >= 0.05")


def test_a_significantly_worse_setting_does_not_qualify():
    worse = _cell(150, 60, alpha=4.0)
    assert decide([OFF, worse], CalibrationRule()).cells[0][1] == "not more accurate than off"


def test_with_no_qualifying_setting_the_recommendation_is_off():
    result = decide([OFF, _cell(200, 0), _cell(150, 50)], CalibrationRule())
    assert result.chosen is None
    assert result.recommendation == {"steer": False, "default_alpha": 0.0,
                                     "default_positions": "from_last_prompt",
                                     "default_mode": "always", "neurons": None}


def test_ties_go_to_fewer_flips_then_smaller_alpha_then_fewer_neurons():
    fewer_flips = _cell(300, 1, alpha=-4.0, neurons=200)
    assert decide([OFF, _cell(300, 2, alpha=-1.0, neurons=10), fewer_flips],
                  CalibrationRule()).chosen is fewer_flips
    smaller_alpha = _cell(300, 2, alpha=-1.0, neurons=200)
    assert decide([OFF, _cell(300, 2, alpha=-4.0, neurons=10), smaller_alpha],
                  CalibrationRule()).chosen is smaller_alpha
    fewer_neurons = _cell(300, 2, alpha=-1.0, neurons=10)
    assert decide([OFF, _cell(300, 2, alpha=-1.0, neurons=25), fewer_neurons],
                  CalibrationRule()).chosen is fewer_neurons


def test_the_rules_thresholds_come_from_its_text():
    rule = CalibrationRule.parse("p=0.01,broken=0.2")
    assert (rule.max_p, rule.max_broken_share) == (0.01, 0.2)
    assert "below 0.01" in rule.describe() and "at most 0.2 of the answers" in rule.describe()
    assert decide([OFF, _cell(320, 30)], rule).chosen is not None


@pytest.mark.parametrize("text, message", [
    ("q=0.1", "keys p, broken"), ("p=abc", "p must be a number"), ("p=0", "in \\(0, 1\\]"),
    ("broken=2", "in \\(0, 1\\]")])
def test_a_malformed_rule_is_refused_naming_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        CalibrationRule.parse(text)


def test_the_grid_tries_both_signs_of_every_magnitude_after_off():
    grid = Grid((1.0, 4.0), (10, 25), ("last_prompt", "generated"), ("always", "adaptive"))
    settings = grid.settings()
    assert settings[0] == Setting(None, 0.0, "off")
    assert grid.alphas == (-4.0, -1.0, 1.0, 4.0)
    assert len(settings) - 1 == 4 * 2 * 2 * 2 == grid.to_dict()["cells"]
    assert Setting("top25", -4.0, "adaptive", "generated") in settings


@pytest.mark.parametrize("kwargs, message", [
    ({"magnitudes": (-1.0,)}, "--alphas must be positive magnitudes"),
    ({"neurons": (0,)}, "--neurons must be positive"),
    ({"positions": ("decode",)}, "--positions must be from"),
    ({"modes": ("off",)}, "--modes must be from always, adaptive"),
])
def test_a_grid_with_a_bad_axis_is_refused_naming_the_flag(kwargs, message):
    axes = {"magnitudes": (1.0,), "neurons": (10,), "positions": ("last_prompt",),
            "modes": ("always",), **kwargs}
    with pytest.raises(ValueError, match=message):
        Grid(**axes)


def test_breaking_exactly_the_allowed_share_still_qualifies():
    rule = CalibrationRule(max_broken_share=0.045)  # 0.045 x 200 = 9 (8.999... in floats)
    assert rule.why_not(_cell(300, 9), OFF) is None
    assert rule.why_not(_cell(300, 10), OFF).startswith("right->wrong 10")


def test_last_ties_go_to_always_then_positions_order_then_the_negative_sign():
    adaptive = _cell(300, 2, mode="adaptive", positions="from_last_prompt")
    always = _cell(300, 2, mode="always", positions="generated")
    assert decide([OFF, adaptive, always], CalibrationRule()).chosen is always
    late = _cell(300, 2, positions="generated")
    early = _cell(300, 2, positions="from_last_prompt")
    assert decide([OFF, late, early], CalibrationRule()).chosen is early
    plus, minus = _cell(300, 2, alpha=4.0), _cell(300, 2, alpha=-4.0)
    assert decide([OFF, plus, minus], CalibrationRule()).chosen is minus
    assert "then the negative sign" in CalibrationRule().describe()


def test_settings_that_differ_only_in_positions_are_summarized_apart():
    from adaras_vllm.evaluate.summary import Graded, summarize

    graded = [Graded("p1", None, 0.0, "1", True, mode="off"),
              Graded("p1", "top1", -4.0, "1", True, positions="last_prompt"),
              Graded("p1", "top1", -4.0, "2", False, positions="generated")]
    rows = {s.positions: s.correct for s in summarize(graded) if s.alpha != 0.0}
    assert rows == {"last_prompt": 1, "generated": 0}


def test_each_grid_request_names_its_mode_and_positions():
    from adaras_vllm.evaluate.runner import _extra

    assert _extra(Setting("top25", -4.0, "adaptive", "last_prompt")) == {
        "steer_alpha": -4.0, "steer_map": "top25", "steer_mode": "adaptive",
        "steer_positions": "last_prompt"}
    assert _extra(Setting(None, 0.0, "off")) == {"steer_alpha": 0.0, "steer_mode": "off"}


def _gated_map(neurons: int):
    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.maps.gate_file import random_gate

    m = NeuronMap.from_layers("m", {0: (list(range(neurons)), [0.1 * (i + 1) for i in
                                                               range(neurons)])},
                              num_hidden_layers=2, intermediate_size=64, hidden_size=8)
    return m.with_gate(random_gate(4, 2, num_hidden_layers=2, intermediate_size=64))


def _record() -> dict:
    return {"rule": CalibrationRule().describe(), "grid": {"alphas": [-4.0, 4.0]},
            "map": {"sha256": "ab" * 32}, "problems": {"path": "/v/validation.jsonl",
                                                         "sha256": "cd" * 32},
            "model": "m"}


def test_a_chosen_setting_becomes_the_maps_top_n_and_defaults_with_its_provenance():
    import json

    from adaras_vllm.evaluate.calibrate_command import calibrated_map

    chosen = _cell(300, 2, alpha=-4.0, neurons=10, mode="adaptive", positions="last_prompt")
    m = calibrated_map(_gated_map(20), decide([OFF, chosen], CalibrationRule()), _record())
    assert (m.num_neurons, m.default_alpha, m.default_mode, m.default_positions) == (
        10, -4.0, "adaptive", "last_prompt")
    assert m.gate is not None
    meta = m.metadata
    assert meta["calibration_recommendation"] == "steer"
    assert json.loads(meta["calibration_chosen"]) == {
        "alpha": -4.0, "neurons": 10, "positions": "last_prompt", "mode": "adaptive"}
    assert json.loads(meta["calibration_validation"])["accuracy"] == 300 / N
    assert meta["calibration_problems"] == "validation.jsonl"


def test_an_off_recommendation_keeps_the_neurons_and_zeroes_the_default_alpha():
    from adaras_vllm.evaluate.calibrate_command import calibrated_map

    m = calibrated_map(_gated_map(20), decide([OFF, _cell(201, 0)], CalibrationRule()),
                       _record())
    assert (m.num_neurons, m.default_alpha, m.default_mode) == (20, 0.0, "always")
    assert m.metadata["calibration_recommendation"] == "off"
    assert m.metadata["calibration_chosen"] == "null"


def test_recalibrating_with_the_same_outcome_keeps_the_fingerprint():
    from adaras_vllm.evaluate.calibrate_command import calibrated_map

    calibration = decide([OFF, _cell(300, 2, neurons=10)], CalibrationRule())
    a = calibrated_map(_gated_map(20), calibration, _record())
    b = calibrated_map(_gated_map(20), calibration, _record()).with_metadata(
        {"calibration_created": "2030-01-01T00:00:00+00:00"})
    assert a.fingerprint() == b.fingerprint()
