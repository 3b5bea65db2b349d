"""`adaras maps build` end to end with a real engine: a planted neuron that fires only on
good traces is ranked first with a positive weight (and one that fires only on bad traces
second, negative); the map carries its provenance and the report sits next to it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CACHE, PAPER, cache_lock, tiny_model
from planted_model import BAD_NEURON, GOOD_NEURON, build_planted_model, planted_traces

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine

ENGINE_FLAGS = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-gib", "0.1",
                "--max-num-seqs", "8", "--max-num-batched-tokens", "128"]


def _adaras(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "adaras_vllm", *args], capture_output=True,
                          text=True, timeout=600)
    return proc


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tiny_model("qwen3")[0]
    with cache_lock():
        model = build_planted_model(base, CACHE / "planted-qwen3")
    work = tmp_path_factory.mktemp("planted")
    traces = work / "traces.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in planted_traces(12)))
    out = work / "planted.safetensors"
    proc = _adaras("maps", "build", "--model", str(model), "--traces", str(traces),
                   "--top-k", "20", "--out", str(out), *ENGINE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_planted_good_neuron_is_ranked_first_with_a_positive_weight(planted):
    top = NeuronMap.load(planted[0]).top(1)
    ((layer, (idx, w)),) = top.layers.items()
    assert (layer, int(idx[0])) == GOOD_NEURON and float(w[0]) > 0


def test_planted_bad_neuron_is_ranked_second_with_a_negative_weight(planted):
    m = NeuronMap.load(planted[0])
    second = {(layer, int(i)): float(w) for layer, (idx, ws) in m.top(2).layers.items()
              for i, w in zip(idx, ws)}
    assert second.get(BAD_NEURON, 0.0) < 0 and len(second) == 2


def test_map_records_model_criterion_counts_and_source(planted):
    m = NeuronMap.load(planted[0])
    assert m.num_neurons == 20 and m.name == "planted"
    assert m.metadata["num_good_traces"] == "12" and m.metadata["num_bad_traces"] == "12"
    assert m.metadata["traces_file"].endswith("traces.jsonl")
    assert "rel_abs_diff" in m.criterion and m.model.endswith("planted-qwen3")
    assert m.good_mean is not None and m.bad_mean is not None


def test_report_json_and_png_sit_next_to_the_map(planted):
    out = planted[0]
    report = json.loads(out.with_name("planted.report.json").read_text())
    assert (report["neurons"][0]["layer"], report["neurons"][0]["index"]) == GOOD_NEURON
    assert report["num_good_traces"] == 12 and report["top_k"] == 20
    assert out.with_name("planted.report.png").read_bytes()[:4] == b"\x89PNG"


def test_build_shows_progress_bars(planted):
    assert "capturing activations" in planted[1].stderr


def test_papers_trace_file_builds_a_map_directly(tmp_path):
    traces = PAPER / "data" / "gsm8k" / "gsm8k_results_Qwen3-32B_filtered.jsonl"
    if not traces.is_file():
        pytest.skip(f"paper reference data not present at {traces}")
    out = tmp_path / "paper.safetensors"
    proc = _adaras("maps", "build", "--model", str(tiny_model("qwen3")[0]), "--traces",
                   str(traces), "--top-k", "50", "--out", str(out), *ENGINE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = NeuronMap.load(out)
    assert m.num_neurons == 50
    assert m.metadata["num_good_traces"] == "60" and m.metadata["num_bad_traces"] == "60"


def test_traces_of_one_label_only_are_refused_before_an_engine_starts(tmp_path):
    traces = tmp_path / "good-only.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in planted_traces(3)[:3]))
    proc = _adaras("maps", "build", "--model", "unused", "--traces", str(traces),
                   "--out", str(tmp_path / "x.safetensors"))
    assert proc.returncode == 1
    assert "needs both good and bad traces; got 3 good and 0 bad" in proc.stderr
