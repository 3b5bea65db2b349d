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

#: All seven published lists: bare name -> (CSV folder, model, its shape).
QWEN3_1_7B = {"model_type": "qwen3", "num_hidden_layers": 28, "intermediate_size": 6144,
              "hidden_size": 2048}
QWEN3_4B = {"model_type": "qwen3", "num_hidden_layers": 36, "intermediate_size": 9728,
            "hidden_size": 2560}
PAPER_MAPS = {
    "aime": ("AIME_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "amc": ("AMC_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "gsm8k": ("gsm8k_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "math": ("Math_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "humaneval": ("HumanEval_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "mbpp": ("Mbpp_Qwen3-1.7B", "Qwen/Qwen3-1.7B", QWEN3_1_7B),
    "aime-qwen3-4b": ("AIME_Qwen3-4B", "Qwen/Qwen3-4B", QWEN3_4B),
}
SHIPPED = {name: folder for name, (folder, _, _) in PAPER_MAPS.items()}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_paper_map_fits_its_model_and_holds_the_csvs_first_50_rows(name, tmp_path):
    m = NeuronMap.load(REPO / "neuron_maps" / f"{name}.safetensors")
    _, _, shape = PAPER_MAPS[name]
    (tmp_path / "config.json").write_text(json.dumps(shape))
    from adaras_vllm.cli import read_model_config

    m.validate(read_model_config(tmp_path))
    csv = PAPER / "rcn_maps" / SHIPPED[name] / "top_200_neurons_by_rel_abs_diff.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} is not here")
    rows = read_paper_csv(csv, num_hidden_layers=shape["num_hidden_layers"],
                          intermediate_size=shape["intermediate_size"])[:50]
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
    assert meta["model"] == PAPER_MAPS[name][1] and float(meta["default_alpha"]) == 0.3


def test_all_seven_published_maps_are_shipped_and_load_by_bare_name():
    registry = MapRegistry.from_spec(",".join(PAPER_MAPS))
    assert registry.names == list(PAPER_MAPS)
    assert all(m.num_neurons == 50 for m in registry.maps)


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
