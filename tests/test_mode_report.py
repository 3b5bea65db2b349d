"""The modes organism's report: does a map's neuron set separate careful from hasty traces?
(The statistics only; the capture is the pipeline's, tested with the map builder.)"""

from __future__ import annotations

import numpy as np
import pytest

from adaras_vllm.maps import NeuronMap
from adaras_vllm.organism.mode_report import (
    cohens_d,
    linear_readout_accuracy,
    rank_order,
    trace_style,
)
from adaras_vllm.pipeline.criterion import GroupStats
from adaras_vllm.pipeline.traces import Trace


def _stats(rows: np.ndarray) -> GroupStats:
    g = GroupStats(rows.shape[1:])
    for r in rows:
        g.add(r)
    return g


def test_a_trace_with_empty_thinking_is_hasty():
    def t(thinking: str) -> Trace:
        return Trace("p", 0, "1+2", thinking, "3", "3", True)

    assert trace_style(t("\n1+2=3\n")) == "careful"
    assert trace_style(t("\n")) == "hasty"


def test_cohens_d_is_the_mean_difference_over_the_pooled_std():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, (4000, 1, 2))
    b = rng.normal(0.0, 1.0, (4000, 1, 2))
    b[:, 0, 1] = a[:, 0, 1]  # same distribution: d about 0
    d = cohens_d(_stats(a), _stats(b))
    assert d[0, 0] == pytest.approx(1.0, abs=0.06) and abs(d[0, 1]) < 0.06


def test_linear_readout_finds_a_separable_mode_and_not_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    signal = rng.normal(size=(400, 20))
    signal[:, 3] += 3.0 * y
    assert linear_readout_accuracy(signal, y) > 0.9
    assert abs(linear_readout_accuracy(rng.normal(size=(400, 20)), y) - 0.5) < 0.1


def test_rank_order_lists_the_maps_neurons_best_first():
    m = NeuronMap.from_layers(
        "m", {0: ([5, 9], [0.1, -0.4]), 2: ([1], [0.2])},
        ranks={0: [2, 0], 2: [1]}, num_hidden_layers=3, intermediate_size=16,
        hidden_size=8, model="x")
    layers, indices, weights = rank_order(m)
    assert layers.tolist() == [0, 2, 0] and indices.tolist() == [9, 1, 5]
    assert weights == pytest.approx([-0.4, 0.2, 0.1])
