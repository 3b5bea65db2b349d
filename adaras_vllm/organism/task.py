"""The organism's task: chained 2-digit additions/subtractions with a written scratchpad.

A reasoning model to steer needs a task whose answers can be checked exactly and whose
reasoning is written out, so that a trace can be graded and its steps inspected. Each
problem is a chain of 2-4 additions/subtractions of numbers in 10..99, e.g. ``47+18-23``;
the worked steps are one line per operation (``47+18=65`` then ``65-23=42``) and the answer
is the integer result (it may be negative).

The user's question is the bare expression (``"47+18-23"``). The chat format the model is
trained on and served with is::

    Q: 47+18-23
    <think>
    47+18=65
    65-23=42
    </think>
    A: \\boxed{42}<|endoftext|>

where everything up to and including ``<think>\\n`` is the rendered prompt (the chat
template with ``add_generation_prompt``). ``<think>``/``</think>`` are plain characters of a
character-level vocabulary, so every detokenizer (vLLM's included, which drops special
tokens from output) reproduces the text exactly.

Splits are disjoint by construction: a question's split is a stable hash of its text.

Two tasks share these questions. ``arith`` always writes the worked steps. ``modes`` (the
positive control) writes each training answer in one of two styles drawn at random,
independent of the question: *careful* (the steps above) or *hasty* (no steps: the thinking
is empty and the model must produce the result in one go)::

    Q: 47+18-23
    <think>
    </think>
    A: \\boxed{42}<|endoftext|>

The prompt never names the style, so the model learns a mixture and its first generated
token chooses the mode; the mode of any completion is visible in its text (`trace_mode`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MIN_OPS, MAX_OPS = 2, 4
MIN_OPERAND, MAX_OPERAND = 10, 99
# Fractions of the question space (by hash) in each split, in this order.
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
TASK_SETTINGS = {
    "ops": [MIN_OPS, MAX_OPS],
    "operands": [MIN_OPERAND, MAX_OPERAND],
    "operators": ["+", "-"],
    "splits": SPLITS,
    "question_format": "bare expression, e.g. 47+18-23",
}

PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<|pad|>", "<|endoftext|>", "<|bos|>", "<|unk|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN]
# Every printable ASCII character plus newline and tab: the task needs few of them, but a
# user typing anything else should still get a well-formed prompt.
ALPHABET = ["\n", "\t"] + [chr(c) for c in range(32, 127)]

# User turn "Q: {q}\n"; the assistant turn opens with "<think>\n" (the generation prompt),
# then its content and EOS. System messages are ignored.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'Q: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if not message['content'].startswith('<think>') -%}{{ '<think>\\n' }}{%- endif -%}"
    "{{ message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<think>\\n' }}{%- endif -%}"
)

_QUESTION_RE = re.compile(r"\d+(?:[+-]\d+)+")
_TERM_RE = re.compile(r"[+-]?\d+")
_BOXED_RE = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")


@dataclass(frozen=True)
class Problem:
    """One chain: ``operands[0] ops[0] operands[1] ops[1] ...``."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def question(self) -> str:
        parts = [str(self.operands[0])]
        for op, b in zip(self.ops, self.operands[1:]):
            parts.append(f"{op}{b}")
        return "".join(parts)

    @property
    def answer(self) -> int:
        return solve(self.question)


def make_problem(rng: random.Random) -> Problem:
    """Draw one problem from ``rng``: the only source of randomness, so seeds reproduce."""
    n_ops = rng.randint(MIN_OPS, MAX_OPS)
    operands = tuple(rng.randint(MIN_OPERAND, MAX_OPERAND) for _ in range(n_ops + 1))
    ops = tuple(rng.choice("+-") for _ in range(n_ops))
    return Problem(operands, ops)


def _parse(question: str) -> list[int]:
    text = question.strip()
    if not _QUESTION_RE.fullmatch(text):
        raise ValueError(f"not a chain of additions/subtractions: {question!r}")
    return [int(t) for t in _TERM_RE.findall(text)]


def solve(question: str) -> int:
    """Recompute the answer from the question text alone (an independent check)."""
    return sum(_parse(question))


def scratchpad(question: str) -> str:
    """The worked steps, one line per operation, left to right (no trailing newline)."""
    terms = _parse(question)
    acc, lines = terms[0], []
    for t in terms[1:]:
        new = acc + t
        lines.append(f"{acc}{'+' if t >= 0 else '-'}{abs(t)}={new}")
        acc = new
    return "\n".join(lines)


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text (disjoint splits)."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) / 16**8
    edge = 0.0
    for name, frac in SPLITS.items():
        edge += frac
        if bucket < edge:
            return name
    return name


def iter_split(split: str, seed: int) -> Iterator[Problem]:
    """Endless stream of distinct problems of ``split``, reproducible from ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = random.Random(f"{split}/{seed}")
    seen: set[str] = set()
    while True:
        problem = make_problem(rng)
        q = problem.question
        if q in seen or split_of(q) != split:
            continue
        seen.add(q)
        yield problem


def record(problem: Problem, split: str) -> dict:
    """A problem in the paper's problems format (the id is stable: a hash of the text)."""
    q = problem.question
    return {
        "id": f"{split}-{hashlib.sha256(q.encode()).hexdigest()[:12]}",
        "question": q,
        "answer": str(problem.answer),
    }


def generate_split(split: str, n: int, seed: int) -> list[dict]:
    """``n`` distinct problems of ``split`` as ``{"id", "question", "answer"}`` records."""
    stream = iter_split(split, seed)
    return [record(next(stream), split) for _ in range(n)]


def write_problems(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records as JSON lines (the paper's problems-file format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def prompt_text(question: str) -> str:
    """What the chat template renders for one user turn with ``add_generation_prompt``."""
    return f"Q: {question}\n<think>\n"


TASKS = ("arith", "modes")
STYLES = ("careful", "hasty")


def completion_text(question: str, style: str = "careful") -> str:
    """The assistant's reply the model is trained to write (without EOS), in ``style``."""
    answer = f"</think>\nA: \\boxed{{{solve(question)}}}"
    if style == "careful":
        return f"{scratchpad(question)}\n{answer}"
    if style == "hasty":
        return answer
    raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


def training_text(question: str, style: str = "careful") -> str:
    """The full training sequence: prompt, reply in ``style``, EOS."""
    return prompt_text(question) + completion_text(question, style) + EOS_TOKEN


def trace_mode(completion: str) -> str | None:
    """``"careful"`` if the thinking before ``</think>`` has any content, ``"hasty"`` if it is
    empty, None if the completion never closes its thinking (it cannot be told)."""
    head, sep, _ = completion.partition("</think>")
    if not sep:
        return None
    return "careful" if head.strip() else "hasty"


def extract_answer(text: str) -> int | None:
    """The integer in the last ``\\boxed{...}`` of a completion, or None."""
    found = _BOXED_RE.findall(text)
    return int(found[-1]) if found else None


def grade(completion: str, answer: str | int) -> bool:
    """Whether a completion's boxed answer equals the reference answer."""
    got = extract_answer(completion)
    return got is not None and got == int(answer)


def build_tokenizer(out_dir: str | Path | None = None):
    """A character-level fast tokenizer with the chat template; saved to ``out_dir`` if given.

    One token per character (WordLevel over an isolated-character pre-tokenizer) and a
    ``Fuse`` decoder, so decoding concatenates with no spaces and round-trips exactly.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
