"""`adaras eval` statistics: accuracy, Wilson intervals, flips and McNemar vs alpha 0."""

from __future__ import annotations

import json

import pytest

from adaras_vllm.evaluate.commands import _alphas
from adaras_vllm.evaluate.runner import Setting, settings_grid
from adaras_vllm.evaluate.summary import Graded, format_table, summarize, write_results


def _graded(alpha: float, pattern: str, steer_map: str | None = None) -> list[Graded]:
    return [Graded(f"p{i}", steer_map, alpha, None, c == "1") for i, c in enumerate(pattern)]


BASE = "1111100000"  # 5/10 right unsteered
STEERED = "1110111111"  # p3 lost (right->wrong), p5..p9 gained (wrong->right)


def test_accuracy_and_interval_per_setting():
    (base, steered) = summarize(_graded(0.0, BASE) + _graded(0.3, STEERED, "m"))
    assert (base.correct, base.n, base.accuracy) == (5, 10, 0.5)
    assert base.ci95 == pytest.approx((0.2366, 0.7634), abs=1e-4)  # Wilson, z=1.96
    assert (steered.correct, steered.accuracy) == (9, 0.9)


def test_flips_are_counted_against_alpha_zero():
    _, steered = summarize(_graded(0.0, BASE) + _graded(0.3, STEERED, "m"))
    assert (steered.right_to_wrong, steered.wrong_to_right) == (1, 5)


def test_mcnemar_exact_p_of_the_flips():
    _, steered = summarize(_graded(0.0, BASE) + _graded(0.3, STEERED, "m"))
    assert steered.mcnemar_p == pytest.approx(0.21875)  # 2 * P(X<=1), X~Bin(6, 1/2)


def test_baseline_has_no_flips_and_p_one():
    (base,) = summarize(_graded(0.0, BASE))
    assert (base.right_to_wrong, base.wrong_to_right, base.mcnemar_p) == (0, 0, 1.0)


def test_alpha_zero_is_required():
    with pytest.raises(ValueError, match="must include 0"):
        summarize(_graded(0.3, STEERED, "m"))
    with pytest.raises(ValueError, match="must include 0"):
        settings_grid([0.1, 0.3], [None])


def test_grid_asks_alpha_zero_once_and_every_map_at_every_other_alpha():
    grid = settings_grid([0.0, 0.1, 0.3], ["top10", "top50"])
    assert grid == [Setting(None, 0.0), Setting("top10", 0.1), Setting("top10", 0.3),
                    Setting("top50", 0.1), Setting("top50", 0.3)]


def test_alphas_flag_parses_sorts_and_refuses_words():
    assert _alphas("0.3,0,0.1") == [0.0, 0.1, 0.3]
    with pytest.raises(Exception, match="comma-separated numbers"):
        _alphas("0,abc")


def test_results_json_holds_summary_and_every_answer(tmp_path):
    graded = _graded(0.0, BASE) + _graded(0.3, STEERED, "m")
    out = tmp_path / "r.json"
    write_results(out, summarize(graded), graded, {"problems": "x.jsonl"})
    data = json.loads(out.read_text())
    assert len(data["answers"]) == 20 and len(data["summary"]) == 2
    assert data["summary"][1]["wrong_to_right"] == 5


def test_table_prints_one_row_per_setting():
    table = format_table(summarize(_graded(0.0, BASE) + _graded(0.3, STEERED, "m")))
    assert len(table.splitlines()) == 3 and "90.00%" in table


def test_grid_with_modes_asks_off_once_and_each_steered_mode_per_map_and_alpha():
    grid = settings_grid([0.0, 0.3], ["m"], ["off", "always", "adaptive"])
    assert grid == [Setting(None, 0.0, "off"), Setting("m", 0.3, "always"),
                    Setting("m", 0.3, "adaptive")]


def test_adaptive_summary_reports_the_share_steered_and_the_gates_precision_and_recall():
    base = _graded(0.0, BASE)  # p5..p9 wrong when off
    fired = [False, False, False, True, False, True, True, False, False, False]
    adaptive = [Graded(f"p{i}", "m", 0.3, None, c == "1", mode="adaptive", steered=f)
                for i, (c, f) in enumerate(zip("1111101100", fired))]
    summaries = summarize(base + adaptive)
    s = next(x for x in summaries if x.mode == "adaptive")
    assert s.steered_fraction == 0.3
    assert s.gate_precision == pytest.approx(2 / 3)  # p5, p6 of p3, p5, p6 were wrong off
    assert s.gate_recall == pytest.approx(2 / 5)
    assert "adaptive" in format_table(summaries) and "gate P" in format_table(summaries)


def test_summary_reports_the_share_of_answers_that_wrote_thinking():
    from adaras_vllm.responses import wrote_thinking

    texts = ["12+3=15\n</think>\nA: \\boxed{15}", "</think>\nA: \\boxed{14}",
             "\n</think>\nA: \\boxed{1}", "12+3=15 (cut off"]
    flags = [wrote_thinking(t) for t in texts]
    assert flags == [True, False, False, None]
    graded = [Graded(f"p{i}", None, 0.0, None, True, thinking=f) for i, f in enumerate(flags)]
    (s,) = summarize(graded)
    assert s.thinking_fraction == 0.25
    assert "thinks" in format_table([s]) and "25.0%" in format_table([s])


def test_summary_has_no_thinking_share_when_no_answer_closes_its_thinking():
    (s,) = summarize(_graded(0.0, BASE))
    assert s.thinking_fraction is None and "thinks" not in format_table([s])
