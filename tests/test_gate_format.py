"""The gate stored in a map file: the fixed layout, round trips, and refusals that name
the field that is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import safetensors.torch
import torch

from adaras_vllm.maps import CorrectnessGate, MapFormatError, NeuronMap
from adaras_vllm.maps.gate_file import GATE_TENSORS, random_gate


def _map(gate: CorrectnessGate | None = None) -> NeuronMap:
    m = NeuronMap.from_layers("m", {1: ([3, 7], [0.5, -0.25]), 2: ([0], [1.0])},
                              num_hidden_layers=4, intermediate_size=16, hidden_size=8,
                              model="tiny", criterion="rel_abs_diff")
    return m if gate is None else m.with_gate(gate)


def _gate(**kw) -> CorrectnessGate:
    return random_gate(6, 5, num_hidden_layers=4, intermediate_size=16, seed=1, **kw)


def _write(tmp_path, tensors, metadata):  # noqa: ANN001, ANN202
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def _file_parts(m: NeuronMap) -> tuple[dict, dict]:
    return dict(m._named_tensors()), dict(m.file_metadata())


def test_a_map_with_a_gate_round_trips_bit_for_bit(tmp_path):
    m = _map(_gate(threshold=0.37))
    m.save(tmp_path / "g.safetensors")
    back = NeuronMap.load(tmp_path / "g.safetensors")
    assert back == m and back.gate is not None
    assert back.gate.threshold == 0.37 and back.fingerprint() == m.fingerprint()
    assert torch.equal(back.gate.mlp0_weight, m.gate.mlp0_weight)


def test_the_file_uses_the_fixed_tensor_names_and_metadata(tmp_path):
    _map(_gate()).save(tmp_path / "g.safetensors")
    with safetensors.safe_open(str(tmp_path / "g.safetensors"), "pt") as f:
        names, meta = set(f.keys()), f.metadata()
    assert set(GATE_TENSORS) <= names
    assert meta["gate_input"] == "prompt[:-1]" and float(meta["gate_threshold"]) == 0.5


def test_adding_a_gate_changes_the_fingerprint():
    assert _map().fingerprint() != _map(_gate()).fingerprint()


def test_top_and_renamed_keep_the_gate():
    m = _map(_gate())
    assert m.top(1).gate is not None and m.renamed("x").gate is not None
    assert torch.equal(m.top(1).gate.neurons, m.gate.neurons)


@pytest.mark.parametrize("name,value,message", [
    ("gate.scorer.weight", torch.ones(1, 5), "gate.scorer.weight has shape (1, 5)"),
    ("gate.mlp.0.weight", torch.ones(5, 5), "gate.mlp.0.weight has shape (5, 5)"),
    ("gate.mlp.2.bias", torch.ones(2), "gate.mlp.2.bias has shape (2,)"),
    ("gate.features.neurons", torch.full((6,), 16, dtype=torch.int64),
     "gate.features.neurons holds 16, out of range [0, 16)"),
    ("gate.features.layers", torch.full((6,), 4, dtype=torch.int64),
     "gate.features.layers holds 4, out of range [0, 4)"),
    ("gate.mlp.0.bias", torch.tensor([1.0, float("nan"), 0, 0, 0]),
     "gate.mlp.0.bias has non-finite values"),
    ("gate.scorer.bias", torch.ones(1, dtype=torch.float64),
     "gate.scorer.bias must be a 1-D float32 tensor"),
])
def test_a_malformed_gate_tensor_is_refused_naming_it(tmp_path, name, value, message):
    tensors, meta = _file_parts(_map(_gate()))
    tensors[name] = value
    with pytest.raises(MapFormatError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        NeuronMap.load(_write(tmp_path, tensors, meta))


def test_a_missing_gate_tensor_is_refused_naming_it(tmp_path):
    tensors, meta = _file_parts(_map(_gate()))
    del tensors["gate.mlp.2.weight"]
    with pytest.raises(MapFormatError, match="missing tensor.*gate.mlp.2.weight"):
        NeuronMap.load(_write(tmp_path, tensors, meta))


def test_an_unknown_gate_tensor_is_refused(tmp_path):
    tensors, meta = _file_parts(_map(_gate()))
    tensors["gate.mlp.4.weight"] = torch.ones(1)
    with pytest.raises(MapFormatError, match="unknown gate tensor 'gate.mlp.4.weight'"):
        NeuronMap.load(_write(tmp_path, tensors, meta))


@pytest.mark.parametrize("threshold", ["abc", "1.5", "-0.1", "nan"])
def test_a_threshold_that_is_not_a_probability_is_refused(tmp_path, threshold):
    tensors, meta = _file_parts(_map(_gate()))
    meta["gate_threshold"] = threshold
    with pytest.raises(MapFormatError, match="gate_threshold .* expected a decimal number in"):
        NeuronMap.load(_write(tmp_path, tensors, meta))


def test_an_unsupported_gate_input_is_refused(tmp_path):
    tensors, meta = _file_parts(_map(_gate()))
    meta["gate_input"] = "prompt"
    with pytest.raises(MapFormatError, match="gate_input is 'prompt'"):
        NeuronMap.load(_write(tmp_path, tensors, meta))


def test_gate_metadata_without_gate_tensors_is_refused(tmp_path):
    tensors, meta = _file_parts(_map())
    meta["gate_threshold"] = "0.5"
    with pytest.raises(MapFormatError, match="gate"):
        NeuronMap.load(_write(tmp_path, tensors, meta))


def test_a_feature_listed_twice_is_refused():
    g = _gate()
    g.layers[1], g.neurons[1] = g.layers[0], g.neurons[0]
    with pytest.raises(MapFormatError, match="more than once"):
        _map(g)


def test_reference_score_pools_with_softmax_over_tanh_scores():
    g = _gate()
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    s = torch.tanh(x @ g.scorer_weight[0] + g.scorer_bias[0])
    z = (torch.exp(s)[:, None] * x).sum(0) / torch.exp(s).sum()
    p = torch.sigmoid(g.mlp2_weight @ torch.relu(g.mlp0_weight @ z + g.mlp0_bias) + g.mlp2_bias)
    assert abs(g.score(x) - float(p)) < 1e-6


def test_an_empty_prompt_prefix_pools_to_zero():
    g = _gate()
    assert abs(g.score(torch.zeros(0, 6)) - g.score(torch.zeros(1, 6))) < 1e-12


def test_maps_inspect_shows_the_gate(tmp_path):
    _map(_gate(threshold=0.42)).save(tmp_path / "g.safetensors")
    out = subprocess.run([sys.executable, "-m", "adaras_vllm", "maps", "inspect",
                          str(tmp_path / "g.safetensors")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "6 features" in out.stdout and "hidden 5" in out.stdout
    assert "threshold 0.42" in out.stdout
