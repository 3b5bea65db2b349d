"""Accuracy per setting with a 95% interval, and a paired comparison with alpha 0.

Every setting answers the same problems, so the comparison with the unsteered run is
paired: McNemar's exact test on the answers that flipped (right->wrong vs wrong->right)
says whether the change is more than chance; the flip counts say what it cost and gained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaras_vllm.pipeline.stats import mcnemar_exact, paired_flips, wilson_interval


@dataclass(frozen=True)
class Graded:
    """One answer: which problem, under which setting, what came back, whether right."""

    problem_id: str
    steer_map: str | None
    alpha: float
    answer: str | None
    correct: bool
    completion_tokens: int = 0


@dataclass(frozen=True)
class SettingSummary:
    steer_map: str | None
    alpha: float
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    right_to_wrong: int
    wrong_to_right: int
    mcnemar_p: float
    mean_completion_tokens: float


def summarize(graded: Sequence[Graded]) -> list[SettingSummary]:
    """One summary per (map, alpha), each paired with the alpha-0 answers."""
    baseline = {g.problem_id: g.correct for g in graded if g.alpha == 0.0}
    if not baseline:
        raise ValueError("the alphas must include 0: steered runs are compared with alpha 0")
    settings: dict[tuple[str | None, float], list[Graded]] = {}
    for g in graded:
        key = (None, 0.0) if g.alpha == 0.0 else (g.steer_map, g.alpha)
        settings.setdefault(key, []).append(g)
    out = []
    for (steer_map, alpha), rows in sorted(
        settings.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        rows = sorted(rows, key=lambda r: r.problem_id)
        missing = [r.problem_id for r in rows if r.problem_id not in baseline]
        if missing:
            raise ValueError(f"problems {missing[:3]} have no alpha-0 answer to compare with")
        base = [baseline[r.problem_id] for r in rows]
        treated = [r.correct for r in rows]
        r2w, w2r = paired_flips(base, treated)
        correct = sum(treated)
        out.append(SettingSummary(
            steer_map=steer_map,
            alpha=alpha,
            n=len(rows),
            correct=correct,
            accuracy=correct / len(rows),
            ci95=wilson_interval(correct, len(rows)),
            right_to_wrong=r2w,
            wrong_to_right=w2r,
            mcnemar_p=mcnemar_exact(r2w, w2r),
            mean_completion_tokens=sum(r.completion_tokens for r in rows) / len(rows),
        ))
    return out


def format_table(summaries: Sequence[SettingSummary]) -> str:
    lines = [f"{'map':<14} {'alpha':>6} {'n':>6} {'accuracy':>9} {'95% CI':>17} "
             f"{'R->W':>5} {'W->R':>5} {'McNemar p':>10}"]
    for s in summaries:
        lines.append(
            f"{(s.steer_map or '-'):<14} {s.alpha:>6g} {s.n:>6} {100 * s.accuracy:>8.2f}% "
            f"[{100 * s.ci95[0]:6.2f}, {100 * s.ci95[1]:6.2f}] {s.right_to_wrong:>5} "
            f"{s.wrong_to_right:>5} {s.mcnemar_p:>10.4g}"
        )
    return "\n".join(lines)


def write_results(
    path: Path, summaries: Sequence[SettingSummary], graded: Sequence[Graded],
    meta: dict[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        **meta,
        "summary": [asdict(s) for s in summaries],
        "answers": [asdict(g) for g in graded],
    }, indent=1) + "\n")


def plot_accuracy(path: Path, summaries: Sequence[SettingSummary], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(s for s in summaries if s.alpha == 0.0)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    maps = sorted({s.steer_map for s in summaries if s.alpha != 0.0}, key=str)
    for m in maps:
        rows = [base] + sorted((s for s in summaries if s.steer_map == m and s.alpha != 0.0),
                               key=lambda s: s.alpha)
        xs = [s.alpha for s in rows]
        ys = [100 * s.accuracy for s in rows]
        err = [[100 * (s.accuracy - s.ci95[0]) for s in rows],
               [100 * (s.ci95[1] - s.accuracy) for s in rows]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m or "steered")
    ax.axhline(100 * base.accuracy, color="grey", ls="--", lw=0.8, label="alpha 0")
    ax.set(xlabel="steer_alpha", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
