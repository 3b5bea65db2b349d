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
    mode: str = "always"
    steered: bool | None = None  # adaptive: whether the gate fired
    gate_score: float | None = None  # adaptive: the gate's p_good
    thinking: bool | None = None  # thinking had content (None: no </think> in the answer)
    verdict: str | None = None  # code: the sandbox's "status: reason"
    positions: str | None = None  # steer_positions asked for (None: the default)


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
    mode: str = "always"
    steered_fraction: float | None = None  # adaptive: share of requests the gate steered
    gate_precision: float | None = None  # adaptive: of those steered, share wrong when off
    gate_recall: float | None = None  # adaptive: of those wrong when off, share steered
    thinking_fraction: float | None = None  # share of answers whose thinking has content
    verdicts: dict[str, int] | None = None  # code: how many ended pass/fail/timeout/error
    positions: str | None = None  # steer_positions asked for (None: the default)


def summarize(graded: Sequence[Graded]) -> list[SettingSummary]:
    """One summary per (map, alpha, mode, positions), each paired with the alpha-0
    answers."""
    baseline = {g.problem_id: g.correct for g in graded if g.alpha == 0.0}
    if not baseline:
        raise ValueError("the alphas must include 0: steered runs are compared with alpha 0")
    settings: dict[tuple[str | None, float, str, str | None], list[Graded]] = {}
    for g in graded:
        key = ((None, 0.0, g.mode, None) if g.alpha == 0.0
               else (g.steer_map, g.alpha, g.mode, g.positions))
        settings.setdefault(key, []).append(g)
    out = []
    for (steer_map, alpha, mode, positions), rows in sorted(
        settings.items(), key=lambda kv: (kv[0][0] or "", kv[0][1], kv[0][2], kv[0][3] or "")
    ):
        rows = sorted(rows, key=lambda r: r.problem_id)
        missing = [r.problem_id for r in rows if r.problem_id not in baseline]
        if missing:
            raise ValueError(f"problems {missing[:3]} have no alpha-0 answer to compare with")
        base = [baseline[r.problem_id] for r in rows]
        treated = [r.correct for r in rows]
        r2w, w2r = paired_flips(base, treated)
        correct = sum(treated)
        gate: dict[str, float | None] = {}
        if mode == "adaptive":
            steered = [bool(r.steered) for r in rows]
            wrong_off = [not b for b in base]
            hits = sum(s and w for s, w in zip(steered, wrong_off))
            gate = {
                "steered_fraction": sum(steered) / len(rows),
                "gate_precision": hits / sum(steered) if any(steered) else None,
                "gate_recall": hits / sum(wrong_off) if any(wrong_off) else None,
            }
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
            mode=mode,
            thinking_fraction=(sum(bool(r.thinking) for r in rows) / len(rows)
                               if any(r.thinking is not None for r in rows) else None),
            verdicts=_verdict_counts(rows),
            positions=positions,
            **gate,
        ))
    return out


def _verdict_counts(rows: Sequence[Graded]) -> dict[str, int] | None:
    if not any(r.verdict for r in rows):
        return None
    counts: dict[str, int] = {}
    for r in rows:
        status = (r.verdict or "error: not graded").split(":", 1)[0]
        counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def format_table(summaries: Sequence[SettingSummary], metric: str = "accuracy") -> str:
    """The summary table; `metric` names the share column (pass@1 for code)."""
    with_modes = any(s.mode != "always" for s in summaries)
    with_thinking = any(s.thinking_fraction is not None for s in summaries)
    with_verdicts = any(s.verdicts for s in summaries)
    with_positions = any(s.positions for s in summaries)
    lines = [f"{'map':<14} {'alpha':>6} " + (f"{'mode':<9} " if with_modes else "")
             + (f"{'positions':<16} " if with_positions else "")
             + f"{'n':>6} {metric:>9} {'95% CI':>17} {'R->W':>5} {'W->R':>5} "
             f"{'McNemar p':>10} {'tokens':>7}" + (f" {'thinks':>7}" if with_thinking else "")
             + (f" {'steered':>8} {'gate P':>7} {'gate R':>7}" if with_modes else "")
             + ("  verdicts" if with_verdicts else "")]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for s in summaries:
        line = (f"{(s.steer_map or '-'):<14} {s.alpha:>6g} "
                + (f"{s.mode:<9} " if with_modes else "")
                + (f"{(s.positions or '-'):<16} " if with_positions else "")
                + f"{s.n:>6} {100 * s.accuracy:>8.2f}% "
                f"[{100 * s.ci95[0]:6.2f}, {100 * s.ci95[1]:6.2f}] {s.right_to_wrong:>5} "
                f"{s.wrong_to_right:>5} {s.mcnemar_p:>10.4g} {s.mean_completion_tokens:>7.1f}")
        if with_thinking:
            line += f" {pct(s.thinking_fraction):>7}"
        if with_modes:
            line += (f" {pct(s.steered_fraction):>8} {pct(s.gate_precision):>7} "
                     f"{pct(s.gate_recall):>7}")
        if with_verdicts:
            line += "  " + " ".join(f"{k} {v}" for k, v in (s.verdicts or {}).items())
        lines.append(line)
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
    curves = sorted({(s.steer_map, s.mode, s.positions) for s in summaries if s.alpha != 0.0},
                    key=str)
    for m, mode, positions in curves:
        rows = [base] + sorted((s for s in summaries if s.alpha != 0.0 and (
            s.steer_map, s.mode, s.positions) == (m, mode, positions)), key=lambda s: s.alpha)
        xs = [s.alpha for s in rows]
        ys = [100 * s.accuracy for s in rows]
        err = [[100 * (s.accuracy - s.ci95[0]) for s in rows],
               [100 * (s.ci95[1] - s.accuracy) for s in rows]]
        label = ((m or "steered") + ("" if mode == "always" else f" ({mode})")
                 + (f" [{positions}]" if positions else ""))
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(100 * base.accuracy, color="grey", ls="--", lw=0.8, label="alpha 0")
    ax.set(xlabel="steer_alpha", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
