"""The README's pipeline commands run as written, with default engine flags, on this machine.

The README shows them for Qwen/Qwen3-1.7B; here the arithmetic organism stands in for the
model and small organism problem files for the user's, and nothing else is changed: no
memory flag is added, so each command must size its own CPU engine (vLLM's default
memory fraction fails on this machine) and say what it chose.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adaras_vllm.organism.assets import ORGANISM_DIR
from adaras_vllm.organism.task import generate_split, write_problems

pytestmark = pytest.mark.engine
README = Path(__file__).resolve().parents[1] / "README.md"
MEMORY_FLAGS = ("--kv-cache", "--gpu-memory-utilization")


def readme_commands() -> list[str]:
    """Every `.venv/bin/adaras` command in the README's bash blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            if command.startswith(".venv/bin/adaras "):
                commands.append(command.split(" #")[0].strip())
    return commands


def _the(prefix: str) -> str:
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert found, f"the README shows no command starting {prefix!r}"
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("readme")
    write_problems(tmp / "problems.jsonl", generate_split("train", 12, seed=5))
    write_problems(tmp / "train.jsonl", generate_split("train", 16, seed=6))
    write_problems(tmp / "val.jsonl", generate_split("validation", 12, seed=6))
    write_problems(tmp / "test.jsonl", generate_split("test", 8, seed=6))
    (tmp / "neuron_maps").mkdir()
    return tmp


def run_as_written(command: str, workdir: Path) -> subprocess.CompletedProcess:
    """The README command with the organism for Qwen/Qwen3-1.7B, run in ``workdir``."""
    assert not any(flag in command for flag in MEMORY_FLAGS), command
    argv = shlex.split(command.replace("Qwen/Qwen3-1.7B", str(ORGANISM_DIR)))
    argv = [sys.executable, "-m", "adaras_vllm", *argv[1:]]
    env = {k: v for k, v in os.environ.items() if k != "ADARAS_NEURON_MAPS"}
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert "CPU engine: KV cache" in proc.stderr, proc.stderr[-2000:]
    return proc


def test_the_readme_shows_the_pipeline_without_memory_flags():
    commands = [c for c in readme_commands() if "Qwen/Qwen3-1.7B" in c]
    assert len(commands) >= 5
    assert not [c for c in commands if any(f in c for f in MEMORY_FLAGS)]


def test_traces_generate_as_written_samples_and_grades_both_labels(workdir):
    from adaras_vllm.pipeline.traces import read_traces

    run_as_written(_the(".venv/bin/adaras traces generate"), workdir)
    traces = read_traces(workdir / "traces.jsonl")
    assert len(traces) == 12 * 8  # --samples 8 per problem
    assert sorted({t.attempt for t in traces}) == list(range(8))
    assert any(t.is_good for t in traces) and not all(t.is_good for t in traces)
    for t in traces:
        assert t.is_good == (t.answer is not None and int(t.answer) == int(t.gold))
        assert "</think>" not in t.thinking


def test_maps_build_from_traces_as_written(workdir):
    run_as_written(_the(".venv/bin/adaras maps build --model Qwen/Qwen3-1.7B --traces"),
                   workdir)
    assert (workdir / "neuron_maps" / "mytask.safetensors").is_file()


def test_gate_train_as_written(workdir):
    proc = run_as_written(_the(".venv/bin/adaras gate train"), workdir)
    assert "ROC-AUC" in proc.stdout


def test_eval_with_the_gate_as_written(workdir):
    proc = run_as_written(_the(".venv/bin/adaras eval --model"), workdir)
    assert "adaptive" in proc.stdout and "McNemar" in proc.stdout
