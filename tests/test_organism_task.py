"""The organism's task generator, tokenizer and chat template (fast: no engine, no training)."""

from __future__ import annotations

import random

import pytest

from adaras_vllm.organism.task import (
    EOS_TOKEN,
    MAX_OPERAND,
    MAX_OPS,
    MIN_OPERAND,
    MIN_OPS,
    SPLITS,
    build_tokenizer,
    completion_text,
    extract_answer,
    generate_split,
    grade,
    make_problem,
    scratchpad,
    solve,
    training_text,
    write_problems,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("organism-tokenizer")
    build_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.fixture(scope="module")
def train_records():
    return generate_split("train", 300, seed=0)


def test_answer_field_equals_recomputed_answer(train_records):
    for r in train_records:
        assert str(solve(r["question"])) == r["answer"]


def test_recomputation_is_plain_arithmetic():
    assert solve("47+18-23") == 42
    assert solve("10-99-99") == -188


def test_scratchpad_last_line_ends_with_answer(train_records):
    for r in train_records:
        assert scratchpad(r["question"]).splitlines()[-1].split("=")[-1] == r["answer"]


def test_scratchpad_has_one_correct_line_per_operation():
    assert scratchpad("47+18-23+5") == "47+18=65\n65-23=42\n42+5=47"
    assert scratchpad("12-50+7") == "12-50=-38\n-38+7=-31"


def test_problems_are_chains_of_two_to_four_two_digit_operations():
    rng = random.Random(0)
    counts = set()
    for _ in range(500):
        p = make_problem(rng)
        assert len(p.operands) == len(p.ops) + 1
        assert MIN_OPS <= len(p.ops) <= MAX_OPS
        assert all(MIN_OPERAND <= x <= MAX_OPERAND for x in p.operands)
        assert set(p.ops) <= {"+", "-"}
        counts.add(len(p.ops))
    assert counts == set(range(MIN_OPS, MAX_OPS + 1))


def test_records_have_problems_format(train_records):
    for r in train_records:
        assert set(r) == {"id", "question", "answer"}
        assert all(isinstance(v, str) for v in r.values())
    assert len({r["id"] for r in train_records}) == len(train_records)


def test_splits_are_disjoint():
    questions = {s: {r["question"] for r in generate_split(s, 2000, seed=0)} for s in SPLITS}
    names = list(SPLITS)
    for i, a in enumerate(names):
        assert len(questions[a]) == 2000
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)


def test_questions_are_unique_within_a_split():
    records = generate_split("train", 2000, seed=3)
    assert len({r["question"] for r in records}) == len(records)


def test_same_seed_gives_same_problems():
    assert generate_split("test", 100, seed=7) == generate_split("test", 100, seed=7)


def test_different_seeds_give_different_problems():
    a = {r["question"] for r in generate_split("test", 100, seed=1)}
    b = {r["question"] for r in generate_split("test", 100, seed=2)}
    assert len(a & b) < 5


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError):
        generate_split("dev", 1, seed=0)


def test_write_problems_writes_json_lines(tmp_path, train_records):
    import json

    path = write_problems(tmp_path / "p.jsonl", train_records[:5])
    assert [json.loads(line) for line in path.read_text().splitlines()] == train_records[:5]


def test_training_text_has_chat_format():
    assert training_text("47+18-23") == (
        "Q: 47+18-23\n<think>\n47+18=65\n65-23=42\n</think>\nA: \\boxed{42}" + EOS_TOKEN
    )


def test_grading_reads_the_boxed_integer():
    assert extract_answer("x\n</think>\nA: \\boxed{-31}") == -31
    assert grade(completion_text("12-50+7"), "-31")
    assert not grade("A: \\boxed{30}", "-31")
    assert not grade("no answer", "-31")


def test_tokenizer_round_trips_training_texts(tokenizer, train_records):
    texts = [training_text(r["question"]) for r in train_records]
    texts.append("spaces  and \\ { } \n\n tabs\t<think></think> 'quotes' \"x\" ~!@#$%^&*()")
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_tokenizer_is_one_token_per_character(tokenizer):
    text = completion_text("47+18-23")
    assert len(tokenizer.encode(text, add_special_tokens=False)) == len(text)


def test_tokenizer_keeps_think_tags_when_skipping_special_tokens(tokenizer):
    text = completion_text("47+18-23")
    ids = tokenizer.encode(text + EOS_TOKEN, add_special_tokens=False)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_adds_no_tokens_by_default(tokenizer):
    assert tokenizer("47")["input_ids"] == tokenizer.convert_tokens_to_ids(["4", "7"])


def test_chat_template_renders_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "47+18"}]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == "Q: 47+18\n<think>\n"


def test_chat_template_renders_assistant_turn_as_training_text(tokenizer):
    q = "47+18-23"
    messages = [
        {"role": "user", "content": q},
        {"role": "assistant", "content": completion_text(q)},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == training_text(q)


def test_hasty_answers_skip_the_steps_and_close_the_thinking_at_once():
    assert training_text("47+18-23", "hasty") == (
        "Q: 47+18-23\n<think>\n</think>\nA: \\boxed{42}" + EOS_TOKEN)
    assert grade(completion_text("47+18-23", "hasty"), "42")


def test_unknown_style_is_refused_by_name():
    with pytest.raises(ValueError, match="style must be one of careful, hasty"):
        completion_text("47+18", "sloppy")


def test_the_mode_of_a_completion_is_read_from_its_thinking():
    from adaras_vllm.organism.task import trace_mode

    assert trace_mode(completion_text("47+18-23")) == "careful"
    assert trace_mode(completion_text("47+18-23", "hasty")) == "hasty"
    assert trace_mode("47+18=65\n65-2") is None  # never closed: cannot be told


def test_hasty_chat_turn_renders_as_its_training_text(tokenizer):
    q = "47+18-23"
    messages = [{"role": "user", "content": q},
                {"role": "assistant", "content": completion_text(q, "hasty")}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == training_text(q, "hasty")
