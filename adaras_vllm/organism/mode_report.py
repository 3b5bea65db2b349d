"""Did the pipeline recover the known mode? Compare a map's neurons with the traces' modes.

In the modes organism the ground truth is known: a trace is careful or hasty (visible in its
text), careful traces are mostly right and hasty ones mostly wrong. A map is built from
good/bad labels only; this report asks whether the neurons it picked are the ones that tell
careful from hasty. Per neuron: Cohen's d between careful and hasty trace means. For the map
as a whole: the overlap of its neurons with the top-K ranked by the same criterion on the
mode labels, how far its |d| sits above a typical neuron's, and how well a linear readout of
its neurons' trace means predicts the mode (cross-validated).

Trace means are captured exactly as `adaras maps build` captures them (same capture text),
so the numbers describe the same activations the map was built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adaras_vllm.maps import NeuronMap
from adaras_vllm.pipeline.activations import ActivationCapture
from adaras_vllm.pipeline.criterion import GroupStats, rank_neurons
from adaras_vllm.pipeline.traces import Trace, capture_text


def trace_style(trace: Trace) -> str:
    """careful if the trace's thinking has content, else hasty (empty thinking)."""
    return "careful" if trace.thinking.strip() else "hasty"


def rank_order(neuron_map: NeuronMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layers, indices, weights) of the map's neurons, best rank first."""
    rows = []
    for layer, (indices, weights) in neuron_map.layers.items():
        for idx, w, r in zip(indices.tolist(), weights.tolist(),
                             neuron_map.ranks[layer].tolist()):
            rows.append((r, layer, idx, w))
    rows.sort()
    _, layers, indices, weights = (np.array(c) for c in zip(*rows))
    return layers.astype(np.int64), indices.astype(np.int64), weights.astype(np.float64)


def cohens_d(a: GroupStats, b: GroupStats) -> np.ndarray:
    """Per-neuron (a - b) / pooled std, 0 where both groups are constant."""
    dof = max(a.count + b.count - 2, 1)
    pooled = np.sqrt(((a.count - 1) * a.std**2 + (b.count - 1) * b.std**2) / dof)
    diff = a.mean - b.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, diff / pooled, 0.0)


def linear_readout_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                            ridge: float = 1.0) -> float:
    """Cross-validated accuracy of a ridge least-squares linear classifier of ``y`` (0/1)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    hits = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        xt = np.c_[(x[train] - mu) / sd, np.ones(len(train))]
        target = 2.0 * y[train] - 1.0
        coef = np.linalg.solve(xt.T @ xt + ridge * np.eye(xt.shape[1]), xt.T @ target)
        pred = np.c_[(x[test] - mu) / sd, np.ones(len(test))] @ coef > 0
        hits += int((pred == y[test].astype(bool)).sum())
    return hits / len(y)


def mode_report(capture: ActivationCapture, traces: Sequence[Trace], neuron_map: NeuronMap,
                *, progress: bool = True) -> dict[str, Any]:
    """The report (JSON-ready); see the module docstring for what each number means."""
    from tqdm import tqdm

    styles = [trace_style(t) for t in traces]
    if len(set(styles)) < 2:
        raise ValueError(f"the traces must include both careful and hasty ones; all "
                         f"{len(traces)} are {styles[0] if styles else 'missing'}")
    layers, indices, weights = rank_order(neuron_map)
    careful, hasty = GroupStats(capture.shape), GroupStats(capture.shape)
    selected = np.zeros((len(traces), len(layers)))
    # As many random neurons, for the baseline: how readable is the mode from any neurons?
    width = capture.shape[1]
    random_flat = np.random.default_rng(0).choice(capture.shape[0] * width, size=len(layers),
                                                  replace=False)
    random_values = np.zeros((len(traces), len(layers)))
    prompts = [capture.encode(capture_text(t.question, t.thinking)) for t in traces]
    with tqdm(total=len(prompts), desc="capturing activations", disable=not progress,
              unit="trace") as bar:
        for i, mean in capture.means(prompts, progress=bar.update):
            (careful if styles[i] == "careful" else hasty).add(mean)
            selected[i] = mean[layers, indices]
            random_values[i] = mean[random_flat // width, random_flat % width]

    d = cohens_d(careful, hasty)
    abs_all = np.abs(d).ravel()
    d_map = d[layers, indices]
    k = len(layers)
    flat = set((layers * width + indices).tolist())
    truth = rank_neurons(careful.mean, hasty.mean)[:k]
    overlap = len(flat & set(truth.tolist()))
    # The map's w points good-minus-bad; careful traces are mostly good, so a map that found
    # the mode has w with the same sign as careful-minus-hasty.
    agree = float(np.mean(np.sign(weights) == np.sign(d_map)))
    y = np.array([s == "careful" for s in styles], dtype=np.int64)
    by_style = {s: [t.is_good for t, st in zip(traces, styles) if st == s]
                for s in ("careful", "hasty")}
    return {
        "map": neuron_map.name,
        "traces": len(traces),
        "careful_traces": int(y.sum()),
        "hasty_traces": int(len(y) - y.sum()),
        "accuracy_by_mode": {s: (sum(v) / len(v) if v else None) for s, v in by_style.items()},
        "good_share_careful": (sum(by_style["careful"]) / max(1, sum(
            t.is_good for t in traces))),
        "map_neurons": k,
        "median_abs_d_map": float(np.median(np.abs(d_map))),
        "median_abs_d_all_neurons": float(np.median(abs_all)),
        "median_abs_d_random_k": float(np.median(abs_all[random_flat])),
        "map_abs_d_percentile": float(np.mean(abs_all[None, :] < np.median(np.abs(d_map)))),
        "overlap_with_mode_ranking": overlap,
        "overlap_share": overlap / k,
        "w_sign_agrees_with_mode": agree,
        "linear_readout_accuracy_map": linear_readout_accuracy(selected, y),
        "linear_readout_accuracy_random_k": linear_readout_accuracy(random_values, y),
        "linear_readout_majority_baseline": float(max(y.mean(), 1 - y.mean())),
        "neurons": [
            {"rank": i, "layer": int(layers[i]), "index": int(indices[i]),
             "weight": float(weights[i]), "d_careful_vs_hasty": float(d_map[i])}
            for i in range(k)
        ],
    }
