"""A coding problems file through `traces generate` -> `maps build` -> `eval` on a tiny model.

The tiny model writes random tokens, so the numbers mean nothing; what is tested is the
wiring: the task is detected from the file, answers are graded by running their code
against the tests in the sandbox, code traces carry verdicts, a map is built from them and
`eval` reports pass@1 with the same statistics as math.

One sampled token per answer: a token that is runnable Python (a number, say) passes the
problems whose tests only need the candidate to run, anything else fails or errors, so both
labels occur.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaras_vllm.coding.problems import CodeProblem, write_code_problems
from adaras_vllm.maps import NeuronMap
from adaras_vllm.pipeline.traces import read_traces

pytestmark = pytest.mark.engine

PROBLEMS = [
    CodeProblem("runs-1", "Write any Python expression.", "assert True\n"),
    CodeProblem("runs-2", "Write a number.", "x = 1\nassert x == 1\n", timeout_s=5),
    CodeProblem("add", "Write add(a, b).", "assert add(1, 2) == 3\n"),
    CodeProblem("square", "Write square(x).", "def check(candidate):\n"
                "    assert candidate(3) == 9\n", entry_point="square"),
]


def adaras(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ADARAS_NEURON_MAPS"}
    proc = subprocess.run([sys.executable, "-m", "adaras_vllm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, qwen3_tiny: tuple) -> dict:
    model_dir, _ = qwen3_tiny
    tmp = tmp_path_factory.mktemp("code")
    write_code_problems(tmp / "code.jsonl", PROBLEMS)
    engine = ["--model", str(model_dir), "--kv-cache-gib", "0.25", "--enforce-eager"]
    generated = adaras("traces", "generate", *engine, "--problems", "code.jsonl",
                       "--samples", "12", "--temperature", "1.0", "--max-tokens", "1",
                       "--seed", "1", "--out", "traces.jsonl", cwd=tmp)
    built = adaras("maps", "build", *engine, "--traces", "traces.jsonl", "--top-k", "20",
                   "--out", "code-map.safetensors", cwd=tmp)
    evaluated = adaras("eval", "--model", str(model_dir), "--neuron-map",
                       "code-map.safetensors", "--problems", "code.jsonl", "--alphas", "0,2",
                       "--max-tokens", "8", "--kv-cache-gib", "0.25", "--enforce-eager",
                       "--out", "eval.json",
                       cwd=tmp)
    return {"dir": tmp, "generated": generated, "built": built, "evaluated": evaluated}


def test_traces_generate_detects_code_and_grades_in_the_sandbox(chain: dict) -> None:
    assert "code traces of 4 problems" in chain["generated"].stdout
    traces = read_traces(chain["dir"] / "traces.jsonl")
    assert len(traces) == 48
    statuses = {t.verdict.split(":")[0] for t in traces}
    assert statuses <= {"pass", "fail", "error", "timeout"}
    assert all(t.is_good == t.verdict.startswith("pass") for t in traces)
    assert all(not t.is_good for t in traces if t.id in ("add", "square"))


def test_code_traces_have_both_labels_and_a_map_is_built_from_them(chain: dict) -> None:
    traces = read_traces(chain["dir"] / "traces.jsonl")
    assert {t.is_good for t in traces} == {True, False}
    built = NeuronMap.load(chain["dir"] / "code-map.safetensors")
    assert built.num_neurons == 20
    assert "neuron map 'code-map'" in chain["built"].stdout


def test_eval_reports_pass_at_1_with_the_same_statistics_as_math(chain: dict) -> None:
    assert "pass@1" in chain["evaluated"].stdout
    results = json.loads((chain["dir"] / "eval.json").read_text())
    assert results["task"] == "code"
    summary = {s["alpha"]: s for s in results["summary"]}
    assert set(summary) == {0.0, 2.0}
    for s in summary.values():
        assert s["n"] == 4 and sum(s["verdicts"].values()) == 4
        assert {"ci95", "right_to_wrong", "wrong_to_right", "mcnemar_p"} <= set(s)
    assert all(a["verdict"] for a in results["answers"])
