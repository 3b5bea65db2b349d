"""`adaras maps calibrate` end to end on the committed arithmetic organism (a real engine, a
short grid on a few validation problems), and its refusals before any engine starts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from adaras_vllm.maps import NeuronMap
from adaras_vllm.organism.assets import ORGANISM_DIR
from adaras_vllm.organism.task import generate_split, write_problems

REPO = Path(__file__).resolve().parents[1]
ENGINE = ["--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "256"]
GRID = ["--alphas", "4", "--neurons", "1,2", "--positions", "last_prompt,generated",
        "--modes", "always,adaptive"]


def _adaras(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaras_vllm", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def arith_map(tmp_path_factory) -> Path:
    """A copy of the arithmetic organism's shipped map (with its gate) to calibrate."""
    from adaras_vllm.organism.assets import ORGANISM_MAP

    shipped = NeuronMap.load(ORGANISM_MAP)
    path = tmp_path_factory.mktemp("calibrate") / "arith-top.safetensors"
    shipped.save(path)
    return path


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    return write_problems(tmp_path_factory.mktemp("problems") / "validation.jsonl",
                          generate_split("validation", 16, seed=3))


@pytest.fixture(scope="module")
def calibrated(arith_map, problems, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "arith.safetensors"
    neurons = NeuronMap.load(arith_map).num_neurons
    grid = [*GRID[:2], "--neurons", f"1,{neurons}", *GRID[4:]]
    proc = _adaras("maps", "calibrate", "--model", ORGANISM_DIR, "--neuron-map", arith_map,
                   "--problems", problems, *grid, "--max-tokens", "96", *ENGINE, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, json.loads(out.with_suffix(".calibration.json").read_text()), neurons


@pytest.mark.engine
def test_every_cell_of_the_grid_is_recorded_against_off(calibrated, problems):
    _, _, record, neurons = calibrated
    assert record["status"] == "done" and record["problems"]["n"] == 16
    assert record["grid"] == {"alphas": [-4.0, 4.0], "neurons": [1, neurons],
                              "positions": ["last_prompt", "generated"],
                              "modes": ["always", "adaptive"], "cells": 16}
    cells = {(c["alpha"], c["neurons"], c["positions"], c["mode"]) for c in record["cells"]}
    assert len(cells) == len(record["cells"]) == 16
    assert record["off"]["mode"] == "off" and record["off"]["n"] == 16
    assert all(c["n"] == 16 for c in record["cells"])
    assert all(c["why_not"] for c in record["cells"] if not c["qualifies"])
    digest = hashlib.sha256(problems.read_bytes()).hexdigest()
    assert record["problems"]["sha256"] == digest


@pytest.mark.engine
def test_the_calibrated_map_carries_the_recommendation_and_its_provenance(calibrated, arith_map):
    _, out, record, neurons = calibrated
    m = NeuronMap.load(out)
    rec = record["recommendation"]
    assert m.default_alpha == rec["default_alpha"]
    assert m.default_positions == rec["default_positions"]
    assert m.default_mode == rec["default_mode"]
    assert m.num_neurons == (rec["neurons"] or neurons)
    assert m.gate is not None  # the gate rides along
    meta = m.metadata
    assert meta["calibration_rule"] == record["rule"]
    assert meta["calibration_map_sha256"] == hashlib.sha256(arith_map.read_bytes()).hexdigest()
    assert meta["calibration_recommendation"] == ("steer" if rec["steer"] else "off")
    assert json.loads(meta["calibration_grid"]) == record["grid"]
    assert json.loads(meta["calibration_validation"])["off_accuracy"] == \
        record["off"]["accuracy"]


@pytest.mark.engine
def test_the_heatmap_is_written_beside_the_map(calibrated):
    proc, out, _, _ = calibrated
    png = out.with_suffix(".calibration.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "answers in" in proc.stdout and str(png) in proc.stdout


@pytest.mark.engine
def test_the_rule_and_grid_are_on_disk_before_the_engine_starts(arith_map, problems, tmp_path):
    out = tmp_path / "never.safetensors"
    proc = _adaras("maps", "calibrate", "--model", tmp_path / "no-such-model", "--neuron-map",
                   arith_map, "--problems", problems, *GRID, *ENGINE, "--out", out, timeout=300)
    assert proc.returncode != 0
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    assert record["status"].startswith("registered") and "McNemar" in record["rule"]
    assert record["grid"]["cells"] == 16 and "cells" not in record
    assert not out.exists()


def test_more_neurons_than_the_map_holds_is_refused_before_any_engine(arith_map, problems,
                                                                       tmp_path):
    proc = _adaras("maps", "calibrate", "--model", ORGANISM_DIR, "--neuron-map", arith_map,
                   "--problems", problems, "--neurons", "10,5000", "--out",
                   tmp_path / "x.safetensors", timeout=120)
    assert proc.returncode == 1
    assert "--neurons 5000 exceed the map's" in proc.stderr
    assert not (tmp_path / "x.calibration.json").exists()


def test_adaptive_without_a_gate_is_refused_before_any_engine(arith_map, problems, tmp_path):
    ungated = tmp_path / "ungated.safetensors"
    NeuronMap.load(arith_map).with_gate(None).save(ungated)
    proc = _adaras("maps", "calibrate", "--model", ORGANISM_DIR, "--neuron-map", ungated,
                   "--problems", problems, "--modes", "always,adaptive", timeout=120)
    assert proc.returncode == 1
    assert "--modes adaptive needs a map with a correctness gate" in proc.stderr


def test_alphas_beyond_the_engines_bound_are_refused_before_any_engine(arith_map, problems,
                                                                        tmp_path):
    proc = _adaras("maps", "calibrate", "--model", ORGANISM_DIR, "--neuron-map", arith_map,
                   "--problems", problems, "--alphas", "4,10", "--out",
                   tmp_path / "x.safetensors", timeout=120)
    assert proc.returncode == 1
    assert "--alphas 10 exceed the engine's bound 8" in proc.stderr


def test_a_shipped_map_is_not_overwritten_without_out(problems):
    proc = _adaras("maps", "calibrate", "--model", ORGANISM_DIR, "--neuron-map", "aime",
                   "--problems", problems, timeout=120)
    assert proc.returncode == 1
    assert "is a shipped map" in proc.stderr and "give --out" in proc.stderr
