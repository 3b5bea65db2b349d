"""The README's main job (``adaras demo``) runs end to end and steering shows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import CACHE

pytestmark = pytest.mark.engine


def test_demo_prints_unsteered_and_steered_completions_that_differ():
    env = {k: v for k, v in os.environ.items() if k != "ADARAS_NEURON_MAPS"}
    proc = subprocess.run(
        [sys.executable, "-m", "adaras_vllm", "demo", "--eager", "--max-tokens", "12",
         "--alphas", "0,4", "--prompt", "the answer is", "--cache-dir", str(CACHE / "demo")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {ln.split("|")[0].strip(): ln.split("->", 1)[1] for ln in proc.stdout.splitlines()
             if "|" in ln and "->" in ln}
    assert set(lines) == {"unsteered", "steer_alpha=4"}
    assert lines["unsteered"] != lines["steer_alpha=4"]
