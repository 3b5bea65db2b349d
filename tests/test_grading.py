"""Answer extraction and grading; every verdict in the table is what math-verify 0.9.0 says."""

from __future__ import annotations

import threading

import pytest

from adaras_vllm.pipeline.grading import extract_final_answer, gold_answer, grade, grade_response

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

# (response, gold, expected correct). Responses go through extract_final_answer + grade.
TABLE = [
    pytest.param(r"So the total is \boxed{72}.", "72", True, id="integer"),
    pytest.param(r"\boxed{73}", "72", False, id="wrong_integer"),
    pytest.param(r"\boxed{1,000}", "1000", True, id="comma_in_predicted"),
    pytest.param(r"\boxed{1000}", "1,000", True, id="comma_in_gold"),
    pytest.param(r"\boxed{70,000}", "70000", True, id="comma_thousands_large"),
    pytest.param(r"\boxed{0.5}", r"\frac{1}{2}", True, id="decimal_vs_frac"),
    pytest.param(r"\boxed{1/2}", r"\frac{1}{2}", True, id="slash_fraction_vs_frac"),
    pytest.param(r"\boxed{\frac{1}{2}}", "0.5", True, id="frac_vs_decimal_gold"),
    pytest.param(r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", True, id="dfrac_vs_frac"),
    pytest.param(r"\boxed{1.5}", r"\frac{3}{2}", True, id="decimal_vs_improper_frac"),
    # Rounded to 2 places is not equal: math-verify compares at float_rounding=6.
    pytest.param(r"\boxed{0.33}", r"\frac{1}{3}", False, id="rounded_decimal_vs_frac"),
    pytest.param(r"\boxed{-3}", "-3", True, id="negative"),
    pytest.param(r"\boxed{3}", "-3", False, id="sign_dropped"),
    pytest.param(r"\boxed{-\frac{1}{2}}", "-0.5", True, id="negative_frac_vs_decimal"),
    pytest.param(r"\boxed{18.00}", "18", True, id="trailing_zero_decimals"),
    pytest.param(r"\boxed{\$18}", "18", True, id="dollar_sign_dropped"),
    pytest.param(r"\boxed{5\text{ dollars}}", "5", True, id="unit_in_text_dropped"),
    pytest.param(r"\boxed{5 \text{cm}}", "5", True, id="text_cm_dropped"),
    # Library verdict: "cm" is a unit it knows and strips, "dollars" is not: bare "5 dollars" is
    # parsed as the product 5*d*o*l*l*a*r*s, so it is NOT equal to 5.
    pytest.param(r"\boxed{5 cm}", "5", True, id="bare_known_unit_dropped"),
    pytest.param(r"\boxed{5 dollars}", "5", False, id="bare_word_unit_not_dropped"),
    pytest.param(r"\boxed{50\%}", "50", True, id="percent_vs_number"),
    # Library verdict: a percentage also matches its fraction (50% == 0.5) ...
    pytest.param(r"\boxed{50\%}", "0.5", True, id="percent_vs_fraction"),
    # ... but a plain 50 does not equal 0.5.
    pytest.param(r"\boxed{50}", "0.5", False, id="number_vs_fraction_no_percent"),
    pytest.param(r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt2}{2}", True, id="nested_boxed_sqrt"),
    pytest.param(r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", True, id="symbolic_equal"),
    pytest.param(r"\boxed{0.7071}", r"\frac{\sqrt{2}}{2}", False, id="approx_4_places"),
    pytest.param(r"First \boxed{3}, then on reflection \boxed{72}", "72", True, id="last_box_wins"),
    pytest.param(r"First \boxed{72}, then on reflection \boxed{3}", "72", False, id="earlier_box"),
    pytest.param("The answer is 72.", "72", False, id="no_boxed_is_wrong"),
    pytest.param(r"\boxed{72}", GSM8K_SOLUTION, True, id="gsm8k_gold"),
    pytest.param(r"\boxed{24}", GSM8K_SOLUTION, False, id="gsm8k_gold_wrong"),
    pytest.param(r"\boxed{1000}", "So it costs $1,000.\n#### 1,000", True, id="gsm8k_gold_comma"),
    pytest.param(r"\boxed{025}", "25", True, id="leading_zero"),
    pytest.param(r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True, id="text_answer"),
    pytest.param(r"\boxed{(3,\pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True, id="tuple"),
    pytest.param(r"\boxed{x=5}", "5", True, id="assignment_vs_value"),
    pytest.param(r"\boxed{2\sqrt{3}}", r"\sqrt{12}", True, id="simplified_radical"),
    pytest.param(r"The answer is \boxed 7.", "7", True, id="boxed_without_braces"),
]


@pytest.mark.parametrize(("response", "gold", "expected"), TABLE)
def test_graded_as_math_verify_says(response: str, gold: str, expected: bool) -> None:
    answer, correct = grade_response(response, gold)
    assert correct is expected, f"answer extracted: {answer!r}"


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 24


def test_custom_pattern_takes_last_match() -> None:
    text = "A: 3\nlet me check again\nA: 72."
    assert grade_response(text, "72", pattern=r"A:\s*(\S+)") == ("72", True)


def test_custom_pattern_ignores_boxed() -> None:
    assert grade_response(r"\boxed{72}", "72", pattern=r"A:\s*(\S+)") == (None, False)


def test_pattern_without_group_is_rejected() -> None:
    with pytest.raises(ValueError, match="no capture group"):
        extract_final_answer("A: 72", pattern=r"A:\s*\S+")


def test_invalid_pattern_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a valid regex"):
        extract_final_answer("A: 72", pattern=r"A:(")


def test_extract_nested_braces() -> None:
    assert extract_final_answer(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"


def test_extract_escaped_braces_are_not_grouping() -> None:
    assert extract_final_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_extract_skips_unclosed_last_box() -> None:
    assert extract_final_answer(r"\boxed{5} and finally \boxed{\frac{1}{") == "5"


def test_extract_skips_empty_box() -> None:
    assert extract_final_answer(r"\boxed{5} then \boxed{}") == "5"


def test_extract_nothing_is_none() -> None:
    assert extract_final_answer("no answer here") is None


def test_extract_other_command_is_not_a_box() -> None:
    assert extract_final_answer(r"\boxedsomething 5") is None


def test_none_predicted_is_wrong() -> None:
    assert grade(None, "72") is False


def test_blank_predicted_is_wrong() -> None:
    assert grade("   ", "72") is False


def test_empty_gold_is_an_error() -> None:
    with pytest.raises(ValueError, match="gold answer .* is empty"):
        grade("72", "#### ")


def test_gold_answer_takes_text_after_last_marker() -> None:
    assert gold_answer("a #### 3\nb #### 72 ") == "72"


def test_grading_works_off_the_main_thread() -> None:
    # math_verify's default timeout uses signal.alarm, which raises in non-main threads.
    results: list[object] = []

    def work() -> None:
        try:
            results.append(grade(r"\frac{1}{2}", "0.5"))
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == [True]
