"""The pipeline on a model that really reasons (the committed organism): sampled traces are
graded into both labels, and `maps build --problems` runs sampling, grading, capture and
the criterion in one go. Also: the committed map fits the committed model, with its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adaras_vllm.maps import NeuronMap
from adaras_vllm.organism.assets import ORGANISM_DIR, ORGANISM_MAP
from adaras_vllm.organism.task import generate_split, write_problems
from adaras_vllm.pipeline.report import report_paths

ENGINE = ["--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "256"]


def _adaras(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaras_vllm", *args], capture_output=True,
                          text=True, timeout=600)


def test_committed_map_validates_against_the_committed_model():
    proc = _adaras("maps", "validate", str(ORGANISM_MAP), "--config", str(ORGANISM_DIR))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK ")


def test_committed_map_has_its_report_and_provenance():
    json_path, png_path = report_paths(ORGANISM_MAP)
    report = json.loads(json_path.read_text())
    m = NeuronMap.load(ORGANISM_MAP)
    assert report["top_k"] == m.num_neurons
    assert int(m.metadata["num_good_traces"]) == report["num_good_traces"] > 0
    assert int(m.metadata["num_bad_traces"]) == report["num_bad_traces"] > 0
    assert png_path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.engine
def test_maps_build_from_problems_runs_every_step(tmp_path):
    problems = write_problems(tmp_path / "p.jsonl", generate_split("train", 12, seed=4))
    out = tmp_path / "org.safetensors"
    proc = _adaras("maps", "build", "--model", str(ORGANISM_DIR), "--problems", str(problems),
                   "--samples", "4", "--temperature", "1.0", "--max-tokens", "128",
                   "--top-k", "16", "--out", str(out), *ENGINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = NeuronMap.load(out)
    assert m.num_neurons == 16
    assert (tmp_path / "org.traces.jsonl").is_file()
    assert m.metadata["traces_file"].endswith("org.traces.jsonl")
    assert all(p.is_file() for p in report_paths(out))
