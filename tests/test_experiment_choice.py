"""The pre-registered rule that picks alpha and neuron count from a validation grid."""

from __future__ import annotations

import json

import pytest

from adaras_vllm.evaluate.choose import choose_from_file, choose_setting


def _row(m: str | None, alpha: float, correct: int, r2w: int = 0) -> dict:
    return {"steer_map": m, "alpha": alpha, "correct": correct, "accuracy": correct / 100,
            "right_to_wrong": r2w, "wrong_to_right": 0, "mcnemar_p": 1.0}


def test_the_highest_accuracy_among_positive_alphas_wins():
    grid = [_row(None, 0.0, 50), _row("top10", 1.0, 55), _row("top50", 2.0, 60),
            _row("top50", -4.0, 90)]
    assert choose_setting(grid)["steer_map"] == "top50"


def test_negative_alphas_are_a_control_and_never_chosen():
    grid = [_row(None, 0.0, 50), _row("top10", -1.0, 99), _row("top10", 0.5, 40)]
    assert choose_setting(grid)["alpha"] == 0.5


def test_ties_go_to_fewer_right_to_wrong_flips_then_smaller_alpha_then_fewer_neurons():
    grid = [_row("top100", 1.0, 60, r2w=3), _row("top200", 2.0, 60, r2w=1),
            _row("top50", 4.0, 60, r2w=1), _row("top25", 2.0, 60, r2w=1)]
    assert (choose_setting(grid)["steer_map"], choose_setting(grid)["alpha"]) == ("top25", 2.0)


def test_a_grid_without_positive_alphas_is_refused():
    with pytest.raises(ValueError, match="alpha > 0"):
        choose_setting([_row(None, 0.0, 50), _row("top10", -1.0, 60)])


def test_choice_from_an_eval_results_file_names_neurons_alpha_and_the_rule(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"summary": [_row(None, 0.0, 50), _row("top25", 2.0, 61)]}))
    chosen = choose_from_file(path)
    assert (chosen["neurons"], chosen["alpha"], chosen["baseline_accuracy"]) == (25, 2.0, 0.5)
    assert "highest validation accuracy" in chosen["rule"]


def test_the_any_sign_rule_lets_a_negative_alpha_win_and_breaks_ties_by_magnitude():
    grid = [_row(None, 0.0, 50), _row("top10", -4.0, 70), _row("top25", 4.0, 70),
            _row("top25", -2.0, 70)]
    chosen = choose_setting(grid, any_sign=True)
    assert (chosen["steer_map"], chosen["alpha"]) == ("top25", -2.0)
