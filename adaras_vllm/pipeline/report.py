"""What a built map looks like: a JSON summary and a PNG next to the map file.

Three views a researcher checks before trusting a map: where the selected neurons sit
(per-layer counts), how large their steering values are (weight histogram), and how well
each separates good from bad traces (good vs bad mean, and the standardized difference
``d = (good - bad) / pooled std`` across traces).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .criterion import GroupStats, Selection


def report_paths(map_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``NAME.safetensors`` -> ``NAME.report.json``, ``NAME.report.png``."""
    p = Path(map_path)
    stem = p.name.removesuffix(".safetensors")
    return p.with_name(f"{stem}.report.json"), p.with_name(f"{stem}.report.png")


def separation(selection: Selection, good: GroupStats, bad: GroupStats) -> np.ndarray:
    """Standardized good-minus-bad difference of each selected neuron (Cohen's d)."""
    g_std = good.std[selection.layers, selection.indices]
    b_std = bad.std[selection.layers, selection.indices]
    n_g, n_b = good.count, bad.count
    dof = max(n_g + n_b - 2, 1)
    pooled = np.sqrt(((n_g - 1) * g_std**2 + (n_b - 1) * b_std**2) / dof)
    diff = selection.good.astype(np.float64) - selection.bad.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / pooled, np.sign(diff) * np.inf)
    return d


def build_report(
    selection: Selection,
    good: GroupStats,
    bad: GroupStats,
    *,
    map_name: str,
    model: str,
    num_layers: int,
    traces_source: str,
) -> dict[str, Any]:
    d = separation(selection, good, bad)
    counts = np.bincount(selection.layers, minlength=num_layers)
    weights = selection.weights.astype(np.float64)
    hist_counts, hist_edges = np.histogram(weights, bins=min(30, max(len(weights), 1)))
    finite_d = d[np.isfinite(d)]
    return {
        "map": map_name,
        "model": model,
        "traces": traces_source,
        "num_good_traces": good.count,
        "num_bad_traces": bad.count,
        "top_k": int(len(weights)),
        "per_layer_counts": {str(layer): int(c) for layer, c in enumerate(counts) if c},
        "weights": {
            "min": float(weights.min()),
            "max": float(weights.max()),
            "mean_abs": float(np.abs(weights).mean()),
            "positive": int((weights > 0).sum()),
            "negative": int((weights < 0).sum()),
            "histogram": {"edges": hist_edges.tolist(), "counts": hist_counts.tolist()},
        },
        "separation": {
            "sign_flips": int((np.sign(selection.good) * np.sign(selection.bad) < 0).sum()),
            "median_abs_d": float(np.median(np.abs(finite_d))) if finite_d.size else None,
            "min_abs_d": float(np.abs(finite_d).min()) if finite_d.size else None,
        },
        "neurons": [
            {
                "rank": i,
                "layer": int(selection.layers[i]),
                "index": int(selection.indices[i]),
                "weight": float(selection.weights[i]),
                "good_mean": float(selection.good[i]),
                "bad_mean": float(selection.bad[i]),
                "score": float(selection.score[i]),
                "d": float(d[i]) if np.isfinite(d[i]) else None,
            }
            for i in range(len(weights))
        ],
    }


def write_report(report: dict[str, Any], json_path: Path, png_path: Path) -> None:
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, png_path)


def plot_report(report: dict[str, Any], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neurons = report["neurons"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    layers = sorted(int(k) for k in report["per_layer_counts"])
    axes[0].bar(layers, [report["per_layer_counts"][str(k)] for k in layers], color="#4c72b0")
    axes[0].set(xlabel="layer", ylabel="selected neurons", title="Neurons per layer")

    hist = report["weights"]["histogram"]
    edges = np.asarray(hist["edges"])
    axes[1].bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge",
                color="#55a868", edgecolor="white")
    axes[1].set(xlabel="w = good - bad", ylabel="neurons", title="Steering weights")

    good = np.array([n["good_mean"] for n in neurons])
    bad = np.array([n["bad_mean"] for n in neurons])
    d = np.array([n["d"] if n["d"] is not None else np.nan for n in neurons])
    sc = axes[2].scatter(bad, good, c=np.clip(np.abs(np.nan_to_num(d, nan=0.0)), 0, 3),
                         cmap="viridis", s=14)
    lo, hi = float(min(good.min(), bad.min())), float(max(good.max(), bad.max()))
    axes[2].plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[2].axvline(0, color="grey", lw=0.5)
    axes[2].set(xlabel="mean on bad traces", ylabel="mean on good traces",
                title="Good vs bad (colour: |d|, capped at 3)")
    fig.colorbar(sc, ax=axes[2])
    fig.suptitle(
        f"{report['map']}: top {report['top_k']} neurons of {report['model']} from "
        f"{report['num_good_traces']} good / {report['num_bad_traces']} bad traces"
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
