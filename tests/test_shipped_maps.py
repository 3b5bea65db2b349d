"""The paper's published RCN maps, shipped in ``neuron_maps/``: they load, fit Qwen3-1.7B's
shape, hold the CSV's first 50 rows in order, carry their provenance, and resolve by bare
name (``--neuron-map aime``)."""

from __future__ import annotations

import json

import pytest
from conftest import PAPER, REPO

from adaras_vllm.engine.registry import MapRegistry
from adaras_vllm.maps import NeuronMap
from adaras_vllm.maps.paper_csv import read_paper_csv

SHIPPED = {"aime": "AIME_Qwen3-1.7B", "gsm8k": "gsm8k_Qwen3-1.7B", "math": "Math_Qwen3-1.7B"}
QWEN3_1_7B = {"model_type": "qwen3", "num_hidden_layers": 28, "intermediate_size": 6144,
              "hidden_size": 2048}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_paper_map_fits_qwen3_1_7b_and_holds_the_csvs_first_50_rows(name, tmp_path):
    m = NeuronMap.load(REPO / "neuron_maps" / f"{name}.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_1_7B))
    from adaras_vllm.cli import read_model_config

    m.validate(read_model_config(tmp_path))
    csv = PAPER / "rcn_maps" / SHIPPED[name] / "top_200_neurons_by_rel_abs_diff.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} is not here")
    rows = read_paper_csv(csv, num_hidden_layers=28, intermediate_size=6144)[:50]
    by_rank = {int(r): (layer, int(i), float(w))
               for layer, (idx, ws) in m.layers.items()
               for i, w, r in zip(idx, ws, m.ranks[layer])}
    assert [by_rank[k] for k in range(50)] == [(r.layer, r.neuron, pytest.approx(r.weight))
                                               for r in rows]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_paper_map_records_where_it_comes_from(name):
    meta = NeuronMap.load(REPO / "neuron_maps" / f"{name}.safetensors").metadata
    assert meta["paper_arxiv"] == "2601.19847" and meta["rows_kept"] == "50"
    assert meta["csv_file"] == f"{SHIPPED[name]}/top_200_neurons_by_rel_abs_diff.csv"
    assert meta["model"] == "Qwen/Qwen3-1.7B" and float(meta["default_alpha"]) == 0.3


def test_a_bare_name_resolves_a_shipped_map():
    registry = MapRegistry.from_spec("aime,g=gsm8k")
    assert registry.names == ["aime", "g"] and registry.get("g").num_neurons == 50


def test_an_unknown_bare_name_lists_the_shipped_maps():
    with pytest.raises(FileNotFoundError, match="shipped: .*aime.*gsm8k"):
        MapRegistry.from_spec("nope")


def test_a_map_for_another_model_name_is_served_with_a_warning_naming_both():
    m = NeuronMap.load(REPO / "neuron_maps" / "aime.safetensors")
    assert m.model_mismatch("/models/Qwen3-1.7B") is None
    warning = m.model_mismatch("/models/my-finetune")
    assert "Qwen/Qwen3-1.7B" in warning and "my-finetune" in warning
