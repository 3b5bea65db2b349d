"""Reading the AdaRAS paper's published neuron rankings (`top_*_neurons_by_rel_abs_diff.csv`).

The CSV carries no model metadata. Its only clue to the model shape is
`overall_neuron_index = layer * intermediate_size + neuron_index_in_layer`, so every row is
checked against the target model's shape: a CSV made for another model fails on the first row
where the arithmetic disagrees, instead of steering the wrong neurons.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from adaras_vllm.maps.errors import MapFormatError, MapMismatchError

COLUMNS = ("overall_neuron_index", "layer", "neuron_index_in_layer", "weight", "abs_weight")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class PaperCsvRow:
    """One ranked neuron; `weight` is already rounded to float32, as it will be stored."""

    layer: int
    neuron: int
    weight: float


def source_label(csv_path: str | PathLike[str]) -> str:
    """Provenance string for map metadata: 'paper-csv:<parent dir>/<file name>'.

    The parent directory names the task and model in the paper's layout
    (e.g. gsm8k_Qwen3-1.7B), which the file name alone does not.
    """
    path = Path(csv_path).resolve()
    return f"paper-csv:{path.parent.name}/{path.name}"


def read_paper_csv(
    csv_path: str | PathLike[str], *, num_hidden_layers: int, intermediate_size: int
) -> list[PaperCsvRow]:
    """Rows in file order (= rank order, best first), checked against the model's shape.

    Extra columns (some files add `useless`: predicts_good / predicts_bad) are ignored; that
    label is just the sign of `weight`.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise MapFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; the paper's CSV has "
                f"{', '.join(COLUMNS)}"
            )
        rows: list[PaperCsvRow] = []
        first_row_of: dict[tuple[int, int], int] = {}
        for row_number, record in enumerate(reader):
            where = f"{path}: row {row_number} (line {reader.line_num})"
            row = _parse_row(record, where, num_hidden_layers, intermediate_size)
            key = (row.layer, row.neuron)
            if key in first_row_of:
                raise MapFormatError(
                    f"{where}: layer {row.layer} neuron {row.neuron} already appeared in row "
                    f"{first_row_of[key]}; each neuron may be ranked only once"
                )
            first_row_of[key] = row_number
            rows.append(row)
    if not rows:
        raise MapFormatError(f"{path}: the CSV has a header but no neuron rows")
    return rows


def ranked_layers(
    rows: list[PaperCsvRow],
) -> tuple[dict[int, tuple[list[int], list[float]]], dict[int, list[int]]]:
    """Rows grouped by layer as (indices, weights), and each neuron's rank (its row number)."""
    layers: dict[int, tuple[list[int], list[float]]] = {}
    ranks: dict[int, list[int]] = {}
    for rank, row in enumerate(rows):
        indices, weights = layers.setdefault(row.layer, ([], []))
        indices.append(row.neuron)
        weights.append(row.weight)
        ranks.setdefault(row.layer, []).append(rank)
    return layers, ranks


def _parse_row(
    record: dict[str, str], where: str, num_hidden_layers: int, intermediate_size: int
) -> PaperCsvRow:
    overall = _integer(record, "overall_neuron_index", where)
    layer = _integer(record, "layer", where)
    neuron = _integer(record, "neuron_index_in_layer", where)
    expected = layer * intermediate_size + neuron
    if overall != expected:
        raise MapMismatchError(
            f"{where}: overall_neuron_index is {overall} but layer {layer} * intermediate_size "
            f"{intermediate_size} + neuron_index_in_layer {neuron} = {expected}"
            f"{_implied_size_hint(overall, layer, neuron)}"
        )
    if not 0 <= layer < num_hidden_layers:
        raise MapMismatchError(
            f"{where}: layer {layer} does not exist in a model with {num_hidden_layers} layers "
            f"(num_hidden_layers={num_hidden_layers})"
        )
    if not 0 <= neuron < intermediate_size:
        raise MapMismatchError(
            f"{where}: neuron_index_in_layer {neuron} is out of range [0, {intermediate_size}) "
            f"(intermediate_size={intermediate_size})"
        )
    weight = _number(record, "weight", where)
    abs_weight = _number(record, "abs_weight", where)
    if not math.isclose(abs(weight), abs_weight, rel_tol=1e-6, abs_tol=1e-12):
        raise MapFormatError(
            f"{where}: abs_weight {record['abs_weight']} is not |weight| = {abs(weight)!r}; "
            "are the columns in the wrong order?"
        )
    return PaperCsvRow(layer=layer, neuron=neuron, weight=float(np.float32(weight)))


def _implied_size_hint(overall: int, layer: int, neuron: int) -> str:
    """Say which intermediate_size the row was written for, when the row reveals it."""
    if layer > 0 and overall > neuron and (overall - neuron) % layer == 0:
        return (
            f"; this CSV looks made for a model with intermediate_size "
            f"{(overall - neuron) // layer}"
        )
    return ""


def _integer(record: dict[str, str], column: str, where: str) -> int:
    text = (record.get(column) or "").strip()
    try:
        return int(text)
    except ValueError:
        raise MapFormatError(f"{where}: {column} is {text!r}; expected an integer") from None


def _number(record: dict[str, str], column: str, where: str) -> float:
    text = (record.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise MapFormatError(f"{where}: {column} is {text!r}; expected a number") from None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise MapFormatError(
            f"{where}: {column} is {text!r}; expected a finite number (that fits float32)"
        )
    return value
