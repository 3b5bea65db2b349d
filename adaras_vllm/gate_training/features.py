"""Choosing the gate's input features: ANOVA F-score of each neuron's prompt mean.

The paper ranks every MLP neuron of every layer by ``f_classif`` (one-way ANOVA) between
questions the model answers correctly and those it gets wrong, and keeps the top N.
With two groups this needs only each group's count, sum and sum of squares per feature,
so questions are streamed in and never held in memory together.
"""

from __future__ import annotations

import numpy as np


class FScore:
    """Streaming two-group ANOVA F over ``[layers, intermediate]`` prompt means."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.n = np.zeros(2, np.int64)
        self.sum = np.zeros((2, *shape), np.float64)
        self.sumsq = np.zeros((2, *shape), np.float64)

    def add(self, mean: np.ndarray, good: bool) -> None:
        g = int(bool(good))
        self.n[g] += 1
        self.sum[g] += mean
        self.sumsq[g] += np.square(mean, dtype=np.float64)

    def scores(self) -> np.ndarray:
        """F per feature (``[layers, intermediate]``); 0 where a feature never varies."""
        n = self.n.astype(np.float64)
        if (n < 1).any() or n.sum() < 3:
            raise ValueError(
                f"the F-score needs questions the model gets right and wrong (got {int(n[1])} "
                f"right, {int(n[0])} wrong); use more or harder/easier problems"
            )
        means = self.sum / n[:, None, None]
        grand = self.sum.sum(0) / n.sum()
        between = (n[:, None, None] * np.square(means - grand)).sum(0)  # k - 1 = 1
        within = (self.sumsq - n[:, None, None] * np.square(means)).sum(0) / (n.sum() - 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(within > 1e-12, between / within, 0.0)
        return np.nan_to_num(f, nan=0.0, posinf=0.0)


def top_features(f: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` highest-F (layer, neuron) pairs, best first (ties: lower layer, index)."""
    flat = f.reshape(-1)
    n = min(n, flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))[:n]
    layers, neurons = np.divmod(order, f.shape[1])
    return layers.astype(np.int64), neurons.astype(np.int64)
