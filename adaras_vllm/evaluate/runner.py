"""Ask every problem under every (map, alpha) setting, against a server or offline.

Against a server the official ``openai`` SDK sends ``extra_body={"steer_alpha": a}``, the
way any client of any deployment of ours would. Offline, one vLLM engine loads every map
named and runs all settings in the same batches: each request carries its own
``steer_alpha``/``steer_map``, which the plugin applies per request. alpha 0 is asked
once: it is the unsteered model whichever map is named.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from adaras_vllm.pipeline.tasks import grade_responses
from adaras_vllm.responses import wrote_thinking

from .summary import Graded


@dataclass(frozen=True)
class Setting:
    steer_map: str | None  # None: the server's / engine's default map
    alpha: float
    mode: str = "always"  # the baseline (alpha 0) is "off"; else "always" or "adaptive"
    positions: str | None = None  # steer_positions sent; None: the server's / map's default


@dataclass(frozen=True)
class AskSettings:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    prompt_template: str = "{question}"
    answer_pattern: str | None = None
    task: str = "math"
    grader_workers: int | None = None
    code_block: str = "first"
    allow_unisolated: bool = False  # code: limits-only sandbox where namespaces are refused
    sandbox_python: str | None = None  # code: the candidates' interpreter (None: the base)


def settings_grid(alphas: Sequence[float], maps: Sequence[str | None],
                  modes: Sequence[str] = ("always",)) -> list[Setting]:
    """alpha 0 (``off``) once, then every map at every other alpha in every steered mode."""
    if 0.0 not in alphas:
        raise ValueError(f"--alphas must include 0 (the unsteered baseline), got {list(alphas)}")
    grid = [Setting(None, 0.0, "always" if list(modes) == ["always"] else "off")]
    grid += [Setting(m, a, mode) for m in maps for mode in modes if mode != "off"
             for a in alphas if a != 0.0]
    return grid


def _extra(setting: Setting) -> dict:
    extra: dict = {"steer_alpha": setting.alpha}
    if setting.steer_map is not None:
        extra["steer_map"] = setting.steer_map
    extra["steer_mode"] = setting.mode  # explicit: a map may recommend another mode
    if setting.positions is not None:
        extra["steer_positions"] = setting.positions
    return extra


@dataclass(frozen=True)
class _Answer:
    """What came back for one (problem, setting), before grading."""

    problem: Any
    setting: Setting
    text: str
    tokens: int
    gate: dict | None


def grade_answers(answers: Sequence[_Answer], ask: AskSettings,
                  progress: bool = True) -> list[Graded]:
    """Grade every answer at once (code answers run in the sandbox pool, in parallel)."""
    traces = grade_responses(ask.task, [(a.problem, 0, a.text) for a in answers],
                             answer_pattern=ask.answer_pattern, workers=ask.grader_workers,
                             progress=progress, code_block=ask.code_block,
                             allow_unisolated=ask.allow_unisolated,
                             sandbox_python=ask.sandbox_python)
    graded = []
    for a, trace in zip(answers, traces):
        adaptive = a.setting.mode == "adaptive"
        graded.append(Graded(
            a.problem.id, a.setting.steer_map, a.setting.alpha, trace.answer, trace.is_good,
            a.tokens, mode=a.setting.mode, positions=a.setting.positions,
            steered=bool(a.gate and a.gate.get("fired")) if adaptive else None,
            gate_score=(a.gate or {}).get("p_good") if adaptive else None,
            thinking=wrote_thinking(a.text), verdict=trace.verdict))
    return graded


def ask_server(
    base_url: str, problems: Sequence[Any], grid: Sequence[Setting], ask: AskSettings,
    *, model: str | None = None, api_key: str = "EMPTY", concurrency: int = 32,
    progress: bool = True,
) -> list[Graded]:
    from openai import OpenAI
    from tqdm import tqdm

    client = OpenAI(base_url=base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith(
        "/v1") else "/v1"), api_key=api_key, max_retries=2, timeout=600)
    model = model or client.models.list().data[0].id

    def one(job: tuple[Any, Setting]) -> _Answer:
        problem, setting = job
        extra = _extra(setting)
        resp = client.chat.completions.create(
            model=model,
            messages=[{"role": "user",
                       "content": ask.prompt_template.format(question=problem.question)}],
            max_tokens=ask.max_tokens, temperature=ask.temperature,
            **({"seed": ask.seed} if ask.temperature > 0 else {}),
            extra_body=extra,
        )
        text = resp.choices[0].message.content or ""
        audit = (getattr(resp, "model_extra", None) or {}).get("steering") or {}
        gate = ({"fired": audit.get("applied"), "p_good": audit.get("gate_score")}
                if setting.mode == "adaptive" else None)
        return _Answer(problem, setting, text, resp.usage.completion_tokens, gate)

    jobs = [(p, s) for s in grid for p in problems]
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(tqdm(pool.map(one, jobs), total=len(jobs), desc="asking the server",
                            disable=not progress, unit="answer"))
    return grade_answers(answers, ask, progress)


def ask_offline(
    model_dir: str, maps: dict[str, str], problems: Sequence[Any],
    grid: Sequence[Setting], ask: AskSettings, *, engine_kwargs: dict | None = None,
    progress: bool = True,
) -> list[Graded]:
    """One engine with every map of ``maps`` (name -> path) loaded; all settings batched."""
    from vllm import LLM, SamplingParams

    from adaras_vllm.engine.gate_runtime import RESULTS_METHOD
    from adaras_vllm.engine.resolved import GATE_KEY

    os.environ["ADARAS_NEURON_MAPS"] = ",".join(f"{n}={p}" for n, p in maps.items())
    from adaras_vllm.engine.plugin import register

    register()
    llm = LLM(model_dir, seed=ask.seed, **(engine_kwargs or {}))
    try:
        jobs = [(p, s) for s in grid for p in problems]
        conversations = [
            [{"role": "user", "content": ask.prompt_template.format(question=p.question)}]
            for p, _ in jobs
        ]
        params = [
            SamplingParams(
                max_tokens=ask.max_tokens, temperature=ask.temperature,
                seed=ask.seed if ask.temperature > 0 else None,
                extra_args={**_extra(s), **({GATE_KEY: f"eval-{i}"}
                                            if s.mode == "adaptive" else {})},
            )
            for i, (_, s) in enumerate(jobs)
        ]
        outputs = llm.chat(conversations, params, use_tqdm=progress)
        gates = (llm.collective_rpc(RESULTS_METHOD, args=(None,))[0]
                 if any(s.mode == "adaptive" for s in grid) else {})
    finally:
        llm.llm_engine.engine_core.shutdown()
    answers = [
        _Answer(p, s, o.outputs[0].text, len(o.outputs[0].token_ids), gates.get(f"eval-{i}"))
        for i, ((p, s), o) in enumerate(zip(jobs, outputs))
    ]
    return grade_answers(answers, ask, progress)
