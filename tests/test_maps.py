"""Neuron maps: importing the paper's CSVs, the safetensors file format, model checks, CLI."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch

from adaras_vllm.cli import main
from adaras_vllm.maps import FORMAT, MapFormatError, MapMismatchError, NeuronMap

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "adaras-paper"
CSV_NAME = "top_200_neurons_by_rel_abs_diff.csv"
TASKS = ("AIME", "gsm8k", "Math")


def qwen3_1_7b(**overrides: object) -> SimpleNamespace:
    """The shape of Qwen3-1.7B, the model the paper's CSVs were made for."""
    shape = dict(num_hidden_layers=28, intermediate_size=6144, hidden_size=2048, model_type="qwen3")
    return SimpleNamespace(**{**shape, **overrides})


def paper_csv(task: str) -> Path:
    path = PAPER / "rcn_maps" / f"{task}_Qwen3-1.7B" / CSV_NAME
    if not path.is_file():
        pytest.skip(f"paper reference CSV not available at {path}")
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def neurons_by_key(neuron_map: NeuronMap) -> dict[tuple[int, int], tuple[int, float]]:
    """(layer, neuron index) -> (rank, weight), flattened from the map."""
    flat = {}
    for layer, (indices, weights) in neuron_map.layers.items():
        for index, weight, rank in zip(indices.tolist(), weights.tolist(),
                                       neuron_map.ranks[layer].tolist()):
            flat[(layer, index)] = (rank, weight)
    return flat


def write_csv(path: Path, rows: list[tuple[int, int, int, str]]) -> Path:
    """A paper-style CSV from (overall_neuron_index, layer, neuron, weight) rows."""
    lines = ["overall_neuron_index,layer,neuron_index_in_layer,weight,abs_weight"]
    lines += [f"{o},{layer},{n},{w},{w.lstrip('-')}" for o, layer, n, w in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------- importing paper CSVs


@pytest.mark.parametrize("task", TASKS)
def test_paper_csv_imports_200_neurons_ranked_in_row_order_with_its_weights(task: str) -> None:
    path = paper_csv(task)
    neuron_map = NeuronMap.from_paper_csv(path, qwen3_1_7b())

    flat = neurons_by_key(neuron_map)
    rows = csv_rows(path)
    assert neuron_map.num_neurons == len(flat) == len(rows) == 200
    for row_number, row in enumerate(rows):
        rank, weight = flat[(int(row["layer"]), int(row["neuron_index_in_layer"]))]
        assert rank == row_number
        assert weight == float(np.float32(row["weight"]))


def test_paper_csv_import_records_shape_and_provenance_in_metadata() -> None:
    neuron_map = NeuronMap.from_paper_csv(paper_csv("gsm8k"), qwen3_1_7b(), model="Qwen/Qwen3-1.7B")

    assert neuron_map.name == "gsm8k_Qwen3-1.7B"
    assert neuron_map.model == "Qwen/Qwen3-1.7B"
    assert neuron_map.model_type == "qwen3"
    assert (neuron_map.num_hidden_layers, neuron_map.intermediate_size, neuron_map.hidden_size) == (
        28, 6144, 2048)
    assert neuron_map.criterion == "rel_abs_diff"
    assert neuron_map.source == f"paper-csv:gsm8k_Qwen3-1.7B/{CSV_NAME}"
    assert neuron_map.default_alpha == 0.3
    assert neuron_map.metadata["top_k"] == "200"
    assert neuron_map.metadata["format"] == FORMAT


def test_map_tensors_have_the_file_format_dtypes_and_are_sorted_by_layer_then_index() -> None:
    neuron_map = NeuronMap.from_paper_csv(paper_csv("AIME"), qwen3_1_7b())

    assert list(neuron_map.layers) == sorted(neuron_map.layers)
    for layer, (indices, weights) in neuron_map.layers.items():
        assert indices.dtype == torch.int64 and weights.dtype == torch.float32
        assert neuron_map.ranks[layer].dtype == torch.int64
        assert indices.tolist() == sorted(indices.tolist())


def test_paper_csv_import_with_top_keeps_the_first_rows() -> None:
    path = paper_csv("AIME")
    neuron_map = NeuronMap.from_paper_csv(path, qwen3_1_7b(), top=50)

    assert neuron_map == NeuronMap.from_paper_csv(path, qwen3_1_7b()).top(50)


def test_paper_csv_for_another_intermediate_size_is_refused_naming_the_row(
    tmp_path: Path,
) -> None:
    # Rows 0 and 1 are in layer 0, where the overall index cannot tell sizes apart.
    path = write_csv(tmp_path / "other_model.csv", [
        (7, 0, 7, "0.5"), (3000, 0, 3000, "0.25"), (6144 + 9, 1, 9, "-0.125"),
    ])

    with pytest.raises(MapMismatchError, match=r"row 2\b.*overall_neuron_index.*6153") as error:
        NeuronMap.from_paper_csv(path, qwen3_1_7b(intermediate_size=3072))
    assert "3072" in str(error.value)


def test_real_paper_csv_is_refused_for_a_model_with_intermediate_size_3072() -> None:
    with pytest.raises(MapMismatchError, match=r"row 0 .*intermediate_size 3072"):
        NeuronMap.from_paper_csv(paper_csv("gsm8k"), qwen3_1_7b(intermediate_size=3072))


def test_paper_csv_with_a_layer_beyond_the_model_is_refused_naming_the_row(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path / "deep.csv", [(6144 * 3 + 1, 3, 1, "0.5"),
                                             (6144 * 30, 30, 0, "0.2")])

    with pytest.raises(MapMismatchError, match=r"row 1\b.*layer 30 .*28 layers"):
        NeuronMap.from_paper_csv(path, qwen3_1_7b())


def test_paper_csv_with_a_repeated_neuron_is_refused_naming_both_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup.csv", [(5, 0, 5, "0.5"), (6, 0, 6, "0.4"), (5, 0, 5, "0.3")])

    with pytest.raises(MapFormatError, match=r"row 2\b.*already appeared in row 0"):
        NeuronMap.from_paper_csv(path, qwen3_1_7b())


def test_paper_csv_with_a_non_finite_weight_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "nan.csv", [(5, 0, 5, "0.5"), (6, 0, 6, "nan")])

    with pytest.raises(MapFormatError, match=r"row 1\b.*weight.*finite"):
        NeuronMap.from_paper_csv(path, qwen3_1_7b())


def test_paper_csv_whose_abs_weight_disagrees_with_weight_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "swapped.csv"
    path.write_text("overall_neuron_index,layer,neuron_index_in_layer,weight,abs_weight\n"
                    "5,0,5,0.5,0.7\n")

    with pytest.raises(MapFormatError, match=r"row 0\b.*abs_weight 0.7 is not \|weight\|"):
        NeuronMap.from_paper_csv(path, qwen3_1_7b())


def test_paper_csv_for_a_moe_model_is_refused() -> None:
    with pytest.raises(MapMismatchError, match="MoE"):
        NeuronMap.from_paper_csv(paper_csv("gsm8k"), qwen3_1_7b(num_experts=128))


# ------------------------------------------------------------------------------ file format


def test_save_then_load_round_trips_tensors_and_metadata_bitwise(tmp_path: Path) -> None:
    original = NeuronMap.from_paper_csv(paper_csv("Math"), qwen3_1_7b(), model="Qwen/Qwen3-1.7B")
    original.save(tmp_path / "math.safetensors")

    loaded = NeuronMap.load(tmp_path / "math.safetensors")

    assert loaded.metadata == original.metadata
    assert list(loaded.layers) == list(original.layers)
    for layer, (indices, weights) in original.layers.items():
        loaded_indices, loaded_weights = loaded.layers[layer]
        assert loaded_indices.dtype == torch.int64 and loaded_weights.dtype == torch.float32
        assert loaded_indices.numpy().tobytes() == indices.numpy().tobytes()
        assert loaded_weights.numpy().tobytes() == weights.numpy().tobytes()
        assert loaded.ranks[layer].numpy().tobytes() == original.ranks[layer].numpy().tobytes()
    assert loaded == original


def test_saved_file_holds_exactly_the_documented_tensors_and_metadata(tmp_path: Path) -> None:
    neuron_map = NeuronMap.from_paper_csv(paper_csv("AIME"), qwen3_1_7b())
    neuron_map.save(tmp_path / "aime.safetensors")

    tensors = safetensors.torch.load_file(tmp_path / "aime.safetensors")
    with safetensors.safe_open(tmp_path / "aime.safetensors", framework="pt") as handle:
        metadata = handle.metadata()

    assert set(tensors) == {f"layers.{layer}.{part}" for layer in neuron_map.layers
                            for part in ("indices", "weights", "rank")}
    assert set(metadata) == {"format", "name", "model", "model_type", "num_hidden_layers",
                             "intermediate_size", "hidden_size", "criterion", "top_k",
                             "default_alpha", "source", "created"}
    assert metadata["format"] == "adaras-neuron-map/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", metadata["created"])


def test_good_and_bad_means_round_trip_when_present(tmp_path: Path) -> None:
    neuron_map = NeuronMap.from_layers(
        "means", {4: ([3, 1], [0.5, -0.25])}, num_hidden_layers=8, intermediate_size=16,
        hidden_size=4, good_mean={4: [1.5, 0.25]}, bad_mean={4: [1.0, 0.5]},
    )
    neuron_map.save(tmp_path / "means.safetensors")

    loaded = NeuronMap.load(tmp_path / "means.safetensors")

    assert loaded == neuron_map
    assert loaded.good_mean is not None and loaded.bad_mean is not None
    assert loaded.good_mean[4].tolist() == [0.25, 1.5]  # sorted along with indices [1, 3]
    assert loaded.bad_mean[4].tolist() == [0.5, 1.0]


# A minimal valid map file; each refusal case below breaks exactly one thing about it.
VALID_METADATA = {
    "format": FORMAT, "name": "crafted", "model": "Qwen/Qwen3-1.7B", "model_type": "qwen3",
    "num_hidden_layers": "28", "intermediate_size": "6144", "hidden_size": "2048",
    "criterion": "rel_abs_diff", "top_k": "3", "default_alpha": "0.3", "source": "test",
    "created": "2025-01-01T00:00:00+00:00",
}


def valid_tensors() -> dict[str, torch.Tensor]:
    return {
        "layers.5.indices": torch.tensor([1, 2, 3], dtype=torch.int64),
        "layers.5.weights": torch.tensor([0.5, -0.25, 0.125], dtype=torch.float32),
    }


def write_map(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    return path


def test_crafted_valid_file_loads_and_is_ranked_by_magnitude_without_rank_tensors(
    tmp_path: Path,
) -> None:
    neuron_map = NeuronMap.load(write_map(tmp_path / "ok.safetensors", valid_tensors(),
                                          VALID_METADATA))

    assert neuron_map.layers[5][0].tolist() == [1, 2, 3]
    assert neuron_map.ranks[5].tolist() == [0, 1, 2]


LOAD_REFUSALS = {
    "duplicate index": ({"layers.5.indices": torch.tensor([1, 2, 2])}, {}, r"duplicate.*\[2\]"),
    "index out of range": (
        {"layers.5.indices": torch.tensor([1, 2, 6144])}, {}, r"6144 is out of range \[0, 6144\)"),
    "negative index": (
        {"layers.5.indices": torch.tensor([-1, 2, 3])}, {}, r"-1 is out of range \[0, 6144\)"),
    "NaN weight": (
        {"layers.5.weights": torch.tensor([0.5, float("nan"), 0.1])}, {}, r"non-finite.*nan"),
    "infinite weight": (
        {"layers.5.weights": torch.tensor([0.5, float("inf"), 0.1])}, {}, r"non-finite.*inf"),
    "float64 weights": (
        {"layers.5.weights": torch.tensor([0.5, -0.25, 0.125], dtype=torch.float64)}, {},
        r"weights has dtype float64; expected float32"),
    "int32 indices": (
        {"layers.5.indices": torch.tensor([1, 2, 3], dtype=torch.int32)}, {},
        r"indices has dtype int32; expected int64"),
    "mismatched lengths": (
        {"layers.5.weights": torch.tensor([0.5, -0.25])}, {},
        r"weights has 2 entries but indices has 3"),
    "2-D weights": (
        {"layers.5.weights": torch.tensor([[0.5, -0.25, 0.125]])}, {}, r"shape \(1, 3\).*1-D"),
    "unknown tensor": ({"layers.5.bias": torch.zeros(3)}, {}, r"unknown tensor 'layers.5.bias'"),
    "weights without indices": (
        {"layers.6.weights": torch.tensor([0.5])}, {}, r"layers \[6\] have no indices"),
    "layer beyond the model": (
        {"layers.28.indices": torch.tensor([0]), "layers.28.weights": torch.tensor([1.0])},
        {"top_k": "4"}, r"layer 28 does not exist .*28 layers"),
    "rank not a permutation": (
        {"layers.5.rank": torch.tensor([0, 1, 1])}, {}, r"ranks must be exactly 0..2.*\[1\]"),
    "wrong format": ({}, {"format": "adaras-neuron-map/0"}, r"format is 'adaras-neuron-map/0'"),
    "top_k disagrees": ({}, {"top_k": "200"}, r"top_k is 200 but the map holds 3 neurons"),
    "non-numeric size": ({}, {"intermediate_size": "big"}, r"intermediate_size is 'big'"),
}


@pytest.mark.parametrize("case", LOAD_REFUSALS, ids=list(LOAD_REFUSALS))
def test_load_refuses_an_invalid_file_naming_file_and_problem(tmp_path: Path, case: str) -> None:
    tensor_changes, metadata_changes, problem = LOAD_REFUSALS[case]
    path = write_map(tmp_path / "bad.safetensors", {**valid_tensors(), **tensor_changes},
                     {**VALID_METADATA, **metadata_changes})

    with pytest.raises(MapFormatError, match=problem) as error:
        NeuronMap.load(path)
    assert str(path) in str(error.value)


def test_load_refuses_a_file_missing_a_metadata_key(tmp_path: Path) -> None:
    metadata = {k: v for k, v in VALID_METADATA.items() if k != "hidden_size"}
    path = write_map(tmp_path / "bad.safetensors", valid_tensors(), metadata)

    with pytest.raises(MapFormatError, match=r"missing 'hidden_size'"):
        NeuronMap.load(path)


def test_load_refuses_a_safetensors_file_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(valid_tensors(), path)

    with pytest.raises(MapFormatError, match=r"no metadata"):
        NeuronMap.load(path)


def test_load_refuses_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "map.safetensors"
    path.write_bytes(b"overall_neuron_index,layer\n")

    with pytest.raises(MapFormatError, match=r"not a readable safetensors file"):
        NeuronMap.load(path)


def test_load_of_a_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.safetensors"))):
        NeuronMap.load(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- from_layers


def test_from_layers_ranks_by_magnitude_breaking_ties_by_layer_then_index() -> None:
    neuron_map = NeuronMap.from_layers(
        "ties", {3: ([7, 2], [0.5, -0.5]), 1: ([9, 4], [-0.5, 2.0])},
        num_hidden_layers=4, intermediate_size=16, hidden_size=8,
    )

    flat = neurons_by_key(neuron_map)
    assert sorted(flat, key=lambda key: flat[key][0]) == [(1, 4), (1, 9), (3, 2), (3, 7)]


def test_from_layers_sorts_each_layer_by_index_keeping_weights_and_ranks_aligned() -> None:
    neuron_map = NeuronMap.from_layers(
        "unsorted", {0: ([5, 1, 3], [0.1, 0.2, 0.3])}, num_hidden_layers=1,
        intermediate_size=8, hidden_size=4, ranks={0: [2, 0, 1]},
    )

    indices, weights = neuron_map.layers[0]
    assert indices.tolist() == [1, 3, 5]
    assert weights.tolist() == pytest.approx([0.2, 0.3, 0.1])
    assert neuron_map.ranks[0].tolist() == [0, 1, 2]


def test_from_layers_refuses_a_layer_the_model_does_not_have() -> None:
    expected = r"'x': layer 30 does not exist .*num_hidden_layers=28"
    with pytest.raises(MapFormatError, match=expected):
        NeuronMap.from_layers("x", {30: ([1], [1.0])}, num_hidden_layers=28,
                              intermediate_size=8, hidden_size=4)


def test_from_layers_refuses_floating_point_indices() -> None:
    expected = r"layer 0: indices has dtype float32; expected integer"
    with pytest.raises(MapFormatError, match=expected):
        NeuronMap.from_layers("x", {0: ([1.0], [1.0])}, num_hidden_layers=1,
                              intermediate_size=8, hidden_size=4)


def test_from_layers_refuses_a_map_without_neurons() -> None:
    with pytest.raises(MapFormatError, match=r"no neurons"):
        NeuronMap.from_layers("empty", {}, num_hidden_layers=1, intermediate_size=8, hidden_size=4)


# ------------------------------------------------------------------------------- validate


def gsm8k_map() -> NeuronMap:
    return NeuronMap.from_paper_csv(paper_csv("gsm8k"), qwen3_1_7b(), name="gsm8k")


def test_validate_accepts_the_model_shape_the_map_was_built_for() -> None:
    assert gsm8k_map().validate(qwen3_1_7b()) is None


def test_validate_refuses_another_intermediate_size_naming_both_values() -> None:
    with pytest.raises(MapMismatchError) as error:
        gsm8k_map().validate(qwen3_1_7b(intermediate_size=3072))
    assert str(error.value) == (
        "neuron map 'gsm8k': intermediate_size is 6144 but the model has 3072")


def test_validate_refuses_another_layer_count() -> None:
    with pytest.raises(MapMismatchError, match=r"num_hidden_layers is 28 but the model has 24"):
        gsm8k_map().validate(qwen3_1_7b(num_hidden_layers=24))


def test_validate_refuses_another_hidden_size() -> None:
    with pytest.raises(MapMismatchError, match=r"hidden_size is 2048 but the model has 1024"):
        gsm8k_map().validate(qwen3_1_7b(hidden_size=1024))


def test_validate_reports_every_mismatching_field_at_once() -> None:
    with pytest.raises(MapMismatchError, match=r"num_hidden_layers .*; intermediate_size .*; "
                                               r"hidden_size .*; model_type is 'qwen3'.*'qwen2'"):
        gsm8k_map().validate(SimpleNamespace(num_hidden_layers=24, intermediate_size=4864,
                                             hidden_size=896, model_type="qwen2"))


def test_validate_refuses_another_model_type() -> None:
    with pytest.raises(MapMismatchError, match=r"model_type is 'qwen3' but the model has 'llama'"):
        gsm8k_map().validate(qwen3_1_7b(model_type="llama"))


def test_validate_ignores_model_type_when_the_config_has_none() -> None:
    gsm8k_map().validate(SimpleNamespace(num_hidden_layers=28, intermediate_size=6144,
                                         hidden_size=2048))


@pytest.mark.parametrize("moe_attribute", ["num_experts", "num_local_experts", "n_routed_experts"])
def test_validate_refuses_a_mixture_of_experts_model(moe_attribute: str) -> None:
    with pytest.raises(MapMismatchError, match=rf"{moe_attribute}=8.*MoE MLPs are not supported"):
        gsm8k_map().validate(qwen3_1_7b(**{moe_attribute: 8}))


def test_validate_accepts_a_dense_model_whose_config_sets_zero_experts() -> None:
    gsm8k_map().validate(qwen3_1_7b(num_experts=0))


def test_validate_refuses_a_config_without_intermediate_size() -> None:
    config = SimpleNamespace(num_hidden_layers=28, hidden_size=2048, model_type="qwen3")
    with pytest.raises(MapMismatchError, match=r"no intermediate_size"):
        gsm8k_map().validate(config)


def test_mismatch_errors_are_value_errors() -> None:
    assert issubclass(MapMismatchError, ValueError) and issubclass(MapFormatError, ValueError)


def test_map_tooling_imports_without_vllm() -> None:
    # Building and inspecting maps must work where no inference engine is installed.
    code = ("import sys, adaras_vllm.maps, adaras_vllm.cli; "
            "sys.exit('vllm' in sys.modules or 'transformers' in sys.modules)")
    repo_root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root).returncode == 0


# ------------------------------------------------------------------------------------ top


def test_top_50_keeps_exactly_the_first_50_csv_rows() -> None:
    # gsm8k's CSV is not sorted by |weight| (rows 46.. restart higher), so keeping the 50
    # largest |w| would pick different neurons: this checks top() follows the file's ranking.
    path = paper_csv("gsm8k")
    top = NeuronMap.from_paper_csv(path, qwen3_1_7b()).top(50)

    expected = {(int(row["layer"]), int(row["neuron_index_in_layer"])): row_number
                for row_number, row in enumerate(csv_rows(path)[:50])}
    assert {key: rank for key, (rank, _) in neurons_by_key(top).items()} == expected


def test_top_updates_top_k_keeps_the_name_and_drops_emptied_layers() -> None:
    full = gsm8k_map()
    top = full.top(3)

    assert top.name == full.name
    assert top.metadata["top_k"] == "3" and top.num_neurons == 3
    assert all(top.layers[layer][0].numel() > 0 for layer in top.layers)
    assert len(top.layers) < len(full.layers)


@pytest.mark.parametrize("n", [0, -1, 201, 2.5, True])
def test_top_refuses_n_outside_1_to_num_neurons(n: object) -> None:
    with pytest.raises(ValueError, match=rf"integer n in \[1, 200\].*got {re.escape(repr(n))}"):
        gsm8k_map().top(n)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_the_same_for_the_same_content(tmp_path: Path) -> None:
    neuron_map = gsm8k_map()
    neuron_map.save(tmp_path / "m.safetensors")
    restamped = NeuronMap(metadata={**neuron_map.metadata, "created": "1999-12-31T23:59:59+00:00"},
                          layers=neuron_map.layers, ranks=neuron_map.ranks)

    assert re.fullmatch(r"[0-9a-f]{16}", neuron_map.fingerprint())
    assert NeuronMap.load(tmp_path / "m.safetensors").fingerprint() == neuron_map.fingerprint()
    assert restamped.fingerprint() == neuron_map.fingerprint()


def test_fingerprint_changes_when_a_weight_changes() -> None:
    neuron_map = gsm8k_map()
    layers = {layer: (indices, weights.clone()) for layer, (indices, weights) in
              neuron_map.layers.items()}
    first_layer = next(iter(layers))
    layers[first_layer][1][0] += 1e-3
    changed = NeuronMap(metadata=neuron_map.metadata, layers=layers, ranks=neuron_map.ranks)

    assert changed.fingerprint() != neuron_map.fingerprint()


def test_fingerprint_changes_when_the_name_changes() -> None:
    neuron_map = gsm8k_map()
    renamed = NeuronMap(metadata={**neuron_map.metadata, "name": "other"},
                        layers=neuron_map.layers, ranks=neuron_map.ranks)

    assert renamed.fingerprint() != neuron_map.fingerprint()


def test_repr_names_the_map_and_its_size() -> None:
    assert repr(gsm8k_map()) == (
        "NeuronMap('gsm8k', 200 neurons in 16 of 28 layers, intermediate_size=6144, "
        "default_alpha=0.3)"
    )


# ------------------------------------------------------------------------------------ CLI

SHAPE_FLAGS = ["--num-hidden-layers", "28", "--intermediate-size", "6144", "--hidden-size", "2048"]


def write_config(directory: Path, **overrides: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen3ForCausalLM"], **vars(qwen3_1_7b(**overrides))}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_cli_import_csv_then_inspect_prints_neurons_per_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = paper_csv("AIME")
    out = tmp_path / "aime.safetensors"

    assert main(["maps", "import-csv", str(path), "--out", str(out), "--name", "aime",
                 "--model-type", "qwen3", *SHAPE_FLAGS]) == 0
    capsys.readouterr()
    assert main(["maps", "inspect", str(out)]) == 0
    printed = capsys.readouterr().out

    counts = {int(layer): int(count)
              for layer, count in re.findall(r"^\s+(\d+)\s+(\d+)\s", printed, re.MULTILINE)}
    assert counts == dict(Counter(int(row["layer"]) for row in csv_rows(path)))
    assert re.search(r"^\s+total\s+200\s+-4.4406\s+4.9946\s", printed, re.MULTILINE)
    assert re.search(r"^\s+name\s+aime$", printed, re.MULTILINE)


def test_cli_import_csv_with_config_reads_the_shape_and_defaults_model_to_the_directory(
    tmp_path: Path,
) -> None:
    model_dir = write_config(tmp_path / "Qwen3-1.7B")
    out = tmp_path / "gsm8k.safetensors"

    assert main(["maps", "import-csv", str(paper_csv("gsm8k")), "--out", str(out),
                 "--name", "gsm8k", "--config", str(model_dir), "--top", "50"]) == 0

    neuron_map = NeuronMap.load(out)
    assert neuron_map.model == str(model_dir.resolve())
    assert neuron_map.model_type == "qwen3" and neuron_map.num_neurons == 50


def test_cli_import_csv_without_a_model_shape_fails_naming_the_missing_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["maps", "import-csv", str(paper_csv("gsm8k")), "--out",
                 str(tmp_path / "m.safetensors"), "--name", "m", "--num-hidden-layers", "28"])

    assert code == 1
    assert "missing --intermediate-size, --hidden-size" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_validate_exits_0_for_a_matching_config_and_1_for_a_mismatching_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gsm8k.safetensors"
    gsm8k_map().save(out)
    matching = write_config(tmp_path / "qwen3-1.7b")
    smaller = write_config(tmp_path / "smaller", intermediate_size=3072)

    assert main(["maps", "validate", str(out), "--config", str(matching)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert main(["maps", "validate", str(out), "--config", str(smaller / "config.json")]) == 1
    assert "intermediate_size is 6144 but the model has 3072" in capsys.readouterr().err


def test_cli_reports_an_unreadable_map_as_an_error_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["maps", "inspect", str(tmp_path / "missing.safetensors")]) == 1
    assert "no neuron map file at" in capsys.readouterr().err


def test_renamed_map_keeps_its_neurons_under_the_new_name(tmp_path):
    m = NeuronMap.from_layers(
        "a", {0: ([1, 2], [0.5, -1.0])}, num_hidden_layers=2, intermediate_size=8, hidden_size=4
    )
    r = m.renamed("b")
    assert r.name == "b" and r.metadata["name"] == "b"
    assert torch.equal(r.layers[0][0], m.layers[0][0])
    assert torch.equal(r.layers[0][1], m.layers[0][1])
