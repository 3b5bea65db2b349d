"""Training the gate: the metrics and the folding are exact, and ``adaras gate train`` on
the organism writes a gate whose in-engine score equals the one it was trained to give."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from adaras_vllm.gate_training.classifier import (
    TrainConfig,
    fold_into_gate,
    predict,
    roc_auc,
    train_classifier,
    youden_threshold,
)
from adaras_vllm.gate_training.features import FScore, top_features


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1, 0], [0.2, 0.9, 0.5]) == 0.5


def test_youden_threshold_separates_a_separable_validation_set():
    t = youden_threshold([1, 1, 0, 0], [0.9, 0.7, 0.4, 0.1])
    assert 0.4 < t < 0.7


def test_f_score_equals_the_two_group_anova_formula():
    rng = np.random.default_rng(0)
    good = rng.normal(1.0, 1.0, (30, 2, 3))
    bad = rng.normal(0.0, 2.0, (20, 2, 3))
    f = FScore((2, 3))
    for x in good:
        f.add(x, True)
    for x in bad:
        f.add(x, False)
    allx = np.concatenate([good, bad])
    between = 30 * (good.mean(0) - allx.mean(0)) ** 2 + 20 * (bad.mean(0) - allx.mean(0)) ** 2
    within = (((good - good.mean(0)) ** 2).sum(0) + ((bad - bad.mean(0)) ** 2).sum(0)) / 48
    assert np.allclose(f.scores(), between / within)


def test_top_features_are_best_first_as_layer_and_neuron():
    f = np.array([[0.0, 5.0, 1.0], [7.0, 0.0, 5.0]])
    layers, neurons = top_features(f, 3)
    assert list(zip(layers, neurons)) == [(1, 0), (0, 1), (1, 2)]


def test_an_f_score_needs_both_outcomes():
    f = FScore((1, 2))
    for _ in range(4):
        f.add(np.ones((1, 2)), True)
    with pytest.raises(ValueError, match="right and wrong"):
        f.scores()


def test_the_folded_gate_reads_raw_features_and_scores_like_the_trained_classifier():
    rng = np.random.default_rng(1)
    xs = [rng.normal(3.0, 5.0, (int(rng.integers(0, 9)), 6)).astype(np.float32)
          for _ in range(24)]
    ys = [int(x.sum() > 0) if len(x) else 0 for x in xs]
    result = train_classifier(xs[:16], ys[:16], xs[16:], ys[16:],
                              TrainConfig(hidden=5, epochs=3, seed=2))
    gate = fold_into_gate(result, range(6), range(6), 0.5, {})
    want = predict(result.model, [(torch.tensor(x) - result.mean) / result.std for x in xs])
    got = [gate.score(torch.tensor(x)) for x in xs]
    assert np.allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``adaras gate train`` on the organism: (gated map, report, validation records)."""
    from adaras_vllm.organism.assets import ORGANISM_DIR, ORGANISM_MAP
    from adaras_vllm.organism.task import generate_split, write_problems

    tmp = tmp_path_factory.mktemp("gate-train")
    train = write_problems(tmp / "train.jsonl", generate_split("train", 40, seed=9))
    val_records = generate_split("validation", 16, seed=9)
    val = write_problems(tmp / "val.jsonl", val_records)
    out = tmp / "gated.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "gate", "train", "--model", str(ORGANISM_DIR),
         "--neuron-map", str(ORGANISM_MAP), "--problems", str(train), "--validation", str(val),
         "--features", "64", "--hidden", "16", "--epochs", "4", "--max-tokens", "96",
         "--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "256",
         "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp / "gated.gate.json").read_text())
    return out, report, val_records, val


@pytest.mark.engine
def test_gate_train_writes_the_gate_its_report_and_keeps_the_maps_neurons(trained):
    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.organism.assets import ORGANISM_MAP

    out, report, _, _ = trained
    gated, base = NeuronMap.load(out), NeuronMap.load(ORGANISM_MAP)
    assert gated.gate is not None and gated.gate.num_features == 64
    assert gated.with_gate(None) == base.with_gate(None)
    assert report["validation"]["n"] == 16 and report["features"] == 64
    assert gated.gate.threshold == report["threshold"]
    assert out.with_name("gated.gate.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.engine
def test_the_served_model_scores_each_question_as_training_said(trained):
    from conftest import start_llm, stop_llm
    from vllm import SamplingParams

    from adaras_vllm.engine.gate_runtime import RESULTS_METHOD
    from adaras_vllm.engine.resolved import GATE_KEY
    from adaras_vllm.organism.assets import ORGANISM_DIR

    out, report, val_records, _ = trained
    llm = start_llm(ORGANISM_DIR, {"arith": out}, eager=True, max_model_len=256)
    try:
        convs = [[{"role": "user", "content": r["question"]}] for r in val_records]
        params = [SamplingParams(max_tokens=2, temperature=0.0, extra_args={
            "steer_mode": "adaptive", "steer_alpha": 1.0, GATE_KEY: r["id"]})
            for r in val_records]
        llm.chat(convs, params, use_tqdm=False)
        got = llm.collective_rpc(RESULTS_METHOD, args=(None,))[0]
    finally:
        stop_llm(llm)
    for pid, p_good in report["validation_p_good"].items():
        assert abs(got[pid]["p_good"] - p_good) < 1e-4, pid


@pytest.mark.engine
def test_eval_compares_off_always_and_adaptive_with_the_gate_s_own_decisions(trained, tmp_path):
    from adaras_vllm.organism.assets import ORGANISM_DIR

    out, report, _, val = trained
    proc = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "eval", "--model", str(ORGANISM_DIR),
         "--neuron-map", str(out), "--problems", str(val), "--alphas", "0,2",
         "--modes", "off,always,adaptive", "--max-tokens", "96", "--dtype", "float32",
         "--kv-cache-gib", "0.25", "--out", str(tmp_path / "eval.json")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "eval.json").read_text())
    rows = {(s["mode"], s["alpha"]) for s in data["summary"]}
    assert rows == {("off", 0.0), ("always", 2.0), ("adaptive", 2.0)}
    answers = {(a["problem_id"], a["mode"]): a for a in data["answers"]}
    fired = {pid: p < report["threshold"] for pid, p in report["validation_p_good"].items()}
    for pid, f in fired.items():
        a = answers[(pid, "adaptive")]
        assert a["steered"] is f and abs(a["gate_score"] - report["validation_p_good"][pid]) < 1e-4
        twin = answers[(pid, "always" if f else "off")]
        assert a["answer"] == twin["answer"], pid
    adaptive = next(s for s in data["summary"] if s["mode"] == "adaptive")
    assert adaptive["steered_fraction"] == sum(fired.values()) / len(fired)
    assert "gate P" in proc.stdout
