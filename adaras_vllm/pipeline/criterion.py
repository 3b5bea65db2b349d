"""The paper's neuron criterion: which MLP neurons separate good from bad reasoning.

For every neuron (layer ``l``, index ``i`` of the ``down_proj`` input) ``good`` and ``bad``
are the mean over traces of the per-trace mean activation. ``w = good - bad`` is the
steering value. Neurons are ranked by the relative difference
``|w| / (|good| + |bad| + 1e-8)`` and then by ``|w|``, both descending: a neuron whose sign
flips between good and bad traces scores 1 ("polarity-aware"), and among equal scores the
larger effect wins. Remaining ties go to the lower layer, then the lower index, so the
ranking is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-8
CRITERION = "rel_abs_diff: |good-bad| / (|good|+|bad|+1e-8), then |good-bad|, descending"


class GroupStats:
    """Running per-neuron sum and sum of squares of per-trace means, for one label.

    Kept in float64 so that thousands of traces add up without drift; only these two
    ``[layers, intermediate]`` arrays are held, however many traces go in.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.sum = np.zeros(shape, np.float64)
        self.sumsq = np.zeros(shape, np.float64)
        self.count = 0

    def add(self, trace_mean: np.ndarray) -> None:
        if trace_mean.shape != self.sum.shape:
            raise ValueError(
                f"a trace's activation means have shape {trace_mean.shape}, "
                f"expected {self.sum.shape} (layers, intermediate)"
            )
        x = trace_mean.astype(np.float64, copy=False)
        self.sum += x
        self.sumsq += x * x
        self.count += 1

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no traces in this group")
        return self.sum / self.count

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation across traces (0 for a single trace)."""
        if self.count < 2:
            return np.zeros_like(self.sum)
        var = (self.sumsq - self.sum * self.sum / self.count) / (self.count - 1)
        return np.sqrt(np.maximum(var, 0.0))


def relative_score(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``|good - bad| / (|good| + |bad| + 1e-8)``: 1 for a sign flip, 0 for no change."""
    good = np.asarray(good, np.float64)
    bad = np.asarray(bad, np.float64)
    return np.abs(good - bad) / (np.abs(good) + np.abs(bad) + EPS)


def rank_neurons(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Flat neuron indices (``layer * I + i``) best first, over all ``[layers, I]`` neurons."""
    good = np.asarray(good, np.float64)
    bad = np.asarray(bad, np.float64)
    if good.shape != bad.shape or good.ndim != 2:
        raise ValueError(
            f"good and bad means must both be [layers, intermediate]; got {good.shape} "
            f"and {bad.shape}"
        )
    score = relative_score(good, bad).ravel()
    magnitude = np.abs(good - bad).ravel()
    flat = np.arange(score.size)
    # lexsort: last key is primary. Descending via negation; flat index breaks ties.
    return np.lexsort((flat, -magnitude, -score))


@dataclass
class Selection:
    """The top-K neurons in rank order, with everything the map and report need."""

    layers: np.ndarray  # int64 [K]
    indices: np.ndarray  # int64 [K]
    weights: np.ndarray  # float32 [K], w = good - bad
    good: np.ndarray  # float32 [K]
    bad: np.ndarray  # float32 [K]
    score: np.ndarray  # float64 [K], the relative difference

    def per_layer(self) -> dict[int, dict[str, np.ndarray]]:
        """Columns grouped by layer, with each neuron's global rank (0 = best)."""
        out: dict[int, dict[str, np.ndarray]] = {}
        for layer in np.unique(self.layers):
            sel = np.flatnonzero(self.layers == layer)
            out[int(layer)] = {
                "indices": self.indices[sel],
                "weights": self.weights[sel],
                "good": self.good[sel],
                "bad": self.bad[sel],
                "rank": sel.astype(np.int64),
            }
        return out


def select_neurons(good: np.ndarray, bad: np.ndarray, top_k: int) -> Selection:
    """The ``top_k`` best-ranked neurons (fewer only if the model has fewer)."""
    if top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    good = np.asarray(good, np.float64)
    bad = np.asarray(bad, np.float64)
    order = rank_neurons(good, bad)[:top_k]
    width = good.shape[1]
    layers, indices = order // width, order % width
    g, b = good.ravel()[order], bad.ravel()[order]
    return Selection(
        layers=layers.astype(np.int64),
        indices=indices.astype(np.int64),
        weights=(g - b).astype(np.float32),
        good=g.astype(np.float32),
        bad=b.astype(np.float32),
        score=relative_score(g, b),
    )
