"""`adaras gate train --labels-field`: the paper's recipe, labels read from each problem's own
line (AIME_train/validation carry the baseline's `is_good`), not from the model's answers;
the paper's files reuse ids, so repeats are numbered and labels follow the lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PAPER

from adaras_vllm.gate_training.commands import field_labels, read_labelled
from adaras_vllm.pipeline.traces import read_problems

AIME = PAPER / "data" / "AIME"


def test_the_papers_aime_gate_files_are_read_with_a_label_per_line():
    train = AIME / "AIME_train.jsonl"
    if not train.is_file():
        pytest.skip(f"{train} is not here")
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    task, problems, labels = read_labelled(train, None, "is_good")
    assert task == "math" and len(problems) == len(rows) == 662
    assert [labels[p.id] for p in problems] == [bool(r["is_good"]) for r in rows]
    assert [p.question for p in problems] == [r["question"] for r in rows]
    assert len({p.id for p in problems}) == 662  # ids the file repeats are numbered


def test_a_repeated_id_is_numbered_only_when_asked(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 7, "question": "a", "answer": "1"}\n'
                    '{"id": 7, "question": "b", "answer": "2"}\n')
    assert [p.id for p in read_problems(path, number_repeats=True)] == ["7", "7#2"]
    with pytest.raises(ValueError, match="duplicate id '7'"):
        read_problems(path)


def test_a_line_without_the_field_is_refused_naming_it(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "1", "is_good": "1"}\n'
                    '{"id": 2, "question": "q", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r":2: has no 'is_good' field"):
        field_labels(path, "is_good")


def test_string_and_integer_labels_are_read_as_booleans(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": "q", "answer": "1", "ok": v}) + "\n"
                            for i, v in enumerate([True, 0, "True", "false", 1])))
    assert field_labels(path, "ok") == [True, False, True, False, True]


def test_labels_and_labels_field_cannot_both_be_given():
    out = subprocess.run([sys.executable, "-m", "adaras_vllm", "gate", "train", "--model", "m",
                          "--neuron-map", "x", "--problems", "p", "--labels", "t",
                          "--labels-field", "is_good"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


@pytest.mark.engine
def test_gate_train_takes_the_labels_from_the_files_not_the_model(tmp_path: Path):
    """Labels chosen here, ids repeated inside and across the files, as in the paper's."""
    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.organism.assets import ORGANISM_DIR, ORGANISM_MAP
    from adaras_vllm.organism.task import generate_split

    def write(path: Path, records: list[dict], offset: int) -> list[bool]:
        labels = [(i + offset) % 3 == 0 for i in range(len(records))]
        path.write_text("".join(
            json.dumps({"id": i // 2, "question": r["question"], "answer": r["answer"],
                        "is_good": good}) + "\n"
            for i, (r, good) in enumerate(zip(records, labels))))
        return labels

    train = write(tmp_path / "train.jsonl", generate_split("train", 24, seed=4), 0)
    val = write(tmp_path / "val.jsonl", generate_split("validation", 12, seed=4), 1)
    out = tmp_path / "gated.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "gate", "train", "--model", str(ORGANISM_DIR),
         "--neuron-map", str(ORGANISM_MAP), "--problems", str(tmp_path / "train.jsonl"),
         "--validation", str(tmp_path / "val.jsonl"), "--labels-field", "is_good",
         "--features", "32", "--hidden", "8", "--epochs", "3", "--dtype", "float32",
         "--kv-cache-gib", "0.25", "--max-model-len", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    good = sum(train) + sum(val)
    assert (f"labels: {good} right, {36 - good} wrong of 36 (from field 'is_good' of the "
            "problems files)") in proc.stdout
    report = json.loads((tmp_path / "gated.gate.json").read_text())
    assert report["validation"]["n"] == 12
    gate = NeuronMap.load(out).gate
    assert gate is not None and gate.provenance["gate_labels"] == (
        "field 'is_good' of the problems files")
