"""The calibration's picture: one accuracy heatmap per positions value, so where steering
helps (and at which sign) is visible at a glance, with ``off`` as its own column and the
colour centred on it (blue better than off, red worse) and the chosen cell outlined."""

from __future__ import annotations

from pathlib import Path

from .calibration import Calibration, Grid, neurons_of


def plot_calibration(path: Path, calibration: Calibration, grid: Grid, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    off = 100 * calibration.off.accuracy
    columns = ["off", *(f"{a:+g}" for a in grid.alphas)]
    rows = [(mode, n) for mode in grid.modes for n in grid.neurons]
    by_key = {(c.mode, c.positions, neurons_of(c), c.alpha): c for c, _ in calibration.cells}
    panels = []
    for positions in grid.positions:
        values = np.full((len(rows), len(columns)), np.nan)
        values[:, 0] = off
        for i, (mode, n) in enumerate(rows):
            for j, alpha in enumerate(grid.alphas, start=1):
                cell = by_key.get((mode, positions, n, alpha))
                if cell is not None:
                    values[i, j] = 100 * cell.accuracy
        panels.append(values)
    spread = max(1.0, max(float(np.nanmax(np.abs(v - off))) for v in panels))
    norm = TwoSlopeNorm(vcenter=off, vmin=off - spread, vmax=off + spread)
    fig, axes = plt.subplots(1, len(grid.positions), squeeze=False, sharey=True,
                             figsize=(1.5 + 0.55 * len(columns) * len(grid.positions),
                                      1.8 + 0.36 * len(rows)))
    image = None
    for ax, positions, values in zip(axes[0], grid.positions, panels):
        image = ax.imshow(values, cmap="RdBu", aspect="auto", norm=norm)
        for i in range(len(rows)):
            for j in range(len(columns)):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7)
        ax.axvline(0.5, color="black", lw=1.5)  # off | steered
        chosen = calibration.chosen
        if chosen is not None and chosen.positions == positions:
            i = rows.index((chosen.mode, neurons_of(chosen)))
            j = 1 + grid.alphas.index(chosen.alpha)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5,
                                   edgecolor="black"))
        ax.set_xticks(range(len(columns)), columns, fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{m} top{n}" for m, n in rows], fontsize=7)
        ax.set_xlabel("steer_alpha", fontsize=8)
        ax.set_title(positions, fontsize=8)
    verdict = ("chosen: outlined" if calibration.chosen is not None
               else "no setting qualified: recommend off")
    fig.suptitle(f"{title}: accuracy (%) per steer_positions; off = {off:.1f} %; {verdict}",
                 fontsize=9)
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
        bar.ax.set_ylim(max(0.0, off - spread), min(100.0, off + spread))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
