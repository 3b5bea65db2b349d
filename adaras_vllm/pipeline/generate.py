"""Sample labelled reasoning traces from a model with vLLM.

Each problem is asked ``samples`` times through the model's chat template; each response
is split into its thinking and its answer and graded (math: the final answer, last
``\\boxed{}`` or a given pattern, against the gold answer with math-verify; code: the
answer's code run against the problem's tests in the sandbox), and the result is a trace in
the format the map builder consumes (``id, attempt, question, thinking, answer, gold,
is_good``, plus ``verdict`` for code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaras_vllm.responses import split_response

from .grading import extract_final_answer, gold_answer, grade
from .traces import Problem, Trace


@dataclass(frozen=True)
class SamplingSettings:
    """How traces are sampled; the paper samples with the model's recommended settings."""

    samples: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    max_tokens: int = 4096
    seed: int = 0
    prompt_template: str = "{question}"
    answer_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be a positive integer, got {self.samples}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens}")
        if "{question}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{question}}', got {self.prompt_template!r}"
            )


def label_response(problem: Problem, attempt: int, text: str, pattern: str | None) -> Trace:
    """One sampled response as a graded trace."""
    thinking, answer_part = split_response(text)
    answer = extract_final_answer(answer_part, pattern)
    gold = gold_answer(problem.answer)
    return Trace(
        id=problem.id,
        attempt=attempt,
        question=problem.question,
        thinking=thinking,
        answer=answer,
        gold=gold,
        is_good=grade(answer, gold),
    )


def sample_responses(
    llm: Any, problems: Sequence[Any], settings: SamplingSettings, progress: bool = True,
) -> list[tuple[Any, int, str]]:
    """(problem, attempt, response text): ``settings.samples`` per problem, with a
    ``vllm.LLM`` through the model's chat template."""
    from vllm import SamplingParams

    # No per-request seed: vLLM 0.32's CPU runner crashes on seeded requests whose prompt
    # spans steps ("CPU Generator does not use offset"). The engine is seeded instead
    # (``LLM(seed=...)``), which makes a run reproducible for the same problems file.
    params = SamplingParams(
        n=settings.samples,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_tokens=settings.max_tokens,
    )
    conversations = [
        [{"role": "user", "content": settings.prompt_template.format(question=p.question)}]
        for p in problems
    ]
    outputs = llm.chat(conversations, params, use_tqdm=progress)
    return [(problem, attempt, completion.text)
            for problem, out in zip(problems, outputs)
            for attempt, completion in enumerate(out.outputs)]


def generate_traces(
    llm: Any, problems: Sequence[Any], settings: SamplingSettings, progress: bool = True,
    task: str = "math", grader_workers: int | None = None, code_block: str = "first",
    allow_unisolated: bool = False, sandbox_python: str | None = None,
) -> list[Trace]:
    """Sample and grade (math: the final answer; code: the answer's code against the tests,
    in the sandbox)."""
    from .tasks import grade_responses

    return grade_responses(task, sample_responses(llm, problems, settings, progress),
                           answer_pattern=settings.answer_pattern, workers=grader_workers,
                           progress=progress, code_block=code_block,
                           allow_unisolated=allow_unisolated, sandbox_python=sandbox_python)
