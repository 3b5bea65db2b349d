"""The gate's training report: JSON with the numbers, and a PNG of the ROC curves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def gate_report_paths(map_path: str | Path) -> tuple[Path, Path]:
    p = Path(map_path)
    stem = p.name.removesuffix(".safetensors")
    return p.with_name(f"{stem}.gate.json"), p.with_name(f"{stem}.gate.png")


def write_gate_report(map_path: str | Path, report: dict[str, Any],
                      val_y: Sequence[int], p_val: Sequence[float],
                      train_y: Sequence[int], p_train: Sequence[float]) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .classifier import roc_curve

    json_path, png_path = gate_report_paths(map_path)
    json_path.write_text(json.dumps(report, indent=2))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, y, p in (("train", train_y, p_train), ("validation", val_y, p_val)):
        if 0 < sum(y) < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            auc = report[name]["auc"]
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (wrong answers predicted right)")
    ax.set_ylabel("true positive rate (right answers predicted right)")
    ax.set_title(f"gate: {report['features']} features, threshold {report['threshold']:.3f}",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
