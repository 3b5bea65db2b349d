"""The bare GPU check (``benchmarks/gpu_bare.py``) runs here on the CPU through the same
code path (no graphs), needs nothing of vLLM, and fails when steering or the gate is
broken. On a CUDA machine it adds CUDA-graph replay and the timings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_bare.py"
#: What the bare check imports of this package: none of it may need vLLM.
VLLM_FREE = ["adaras_vllm.maps", "adaras_vllm.engine.state", "adaras_vllm.engine.steer",
             "adaras_vllm.engine.token_rows", "adaras_vllm.engine.capture",
             "adaras_vllm.engine.model_patch", "adaras_vllm.engine.gate_runtime",
             "adaras_vllm.engine.step_layout", "adaras_vllm.engine.host_rows",
             "adaras_vllm.engine.shard", "adaras_vllm.engine.runner_steering",
             "adaras_vllm.engine.resolved", "adaras_vllm.engine.registry"]
BLOCK_VLLM = "import sys; sys.modules['vllm'] = None; "


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ADARAS_NEURON_MAPS", None)
    return subprocess.run([sys.executable, "-c", BLOCK_VLLM + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_checked_modules_import_with_vllm_blocked(tmp_path):
    out = _python("import importlib; [importlib.import_module(m) for m in "
                  f"{VLLM_FREE!r}]; print('ok')", tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_the_bare_check_passes_on_the_cpu_with_vllm_blocked(tmp_path):
    result = tmp_path / "gpu-bare.json"
    out = _python("import runpy; sys.argv = ['gpu_bare.py', '--device', 'cpu', '--small', "
                  f"'--out', {str(result)!r}]; runpy.run_path({str(SCRIPT)!r}, "
                  "run_name='__main__')", tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(result.read_text())
    assert report["failed"] == [] and report["environment"]["vllm_imported"] is False
    assert report["steering_float32"]["ok"] and report["gate_and_capture"]["ok"]
    assert "all checks passed" in out.stdout


@pytest.fixture(scope="module")
def gpu_bare():
    spec = importlib.util.spec_from_file_location("gpu_bare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bare"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_bare", None)


def test_the_bare_check_fails_when_steering_skips_tokens(gpu_bare, monkeypatch):
    """A steer op that leaves every token but the first alone (the decode-token bug other
    steering servers shipped) must fail the hook-rule comparison."""
    import torch

    from adaras_vllm.engine import model_patch, steer

    def first_token_only(x, delta, indices, scratch=None):  # noqa: ANN001, ANN202
        return steer.steer_(x[:1], delta, indices, None if scratch is None else scratch)

    monkeypatch.setattr(model_patch, "steer_", first_token_only)
    result = gpu_bare.check_steering(gpu_bare.SMALL, torch.device("cpu"), torch.float32, 64)
    assert result["ok"] is False
    assert not all(case["equals_hook_rule"] for case in result["cases"])


def test_the_bare_check_fails_when_the_gate_pools_nothing(gpu_bare, monkeypatch):
    import torch

    from adaras_vllm.engine.gate_runtime import GateState

    monkeypatch.setattr(GateState, "pool_", lambda self, n: None)
    result = gpu_bare.check_gate_and_capture(gpu_bare.SMALL, torch.device("cpu"), 32)
    assert result["ok"] is False
    assert all(row["capture_mean_err"] <= 1e-4 for row in result["requests"])


def test_a_bare_checkout_finds_its_shipped_maps_without_an_install(monkeypatch):
    """On the GPU machine the repository is only on PYTHONPATH: no adaras_vllm.neuron_maps
    package exists there, so the lookup falls back to the checkout's own folders."""
    import importlib.resources

    from adaras_vllm import package_data

    def not_installed(name):  # noqa: ANN001, ANN202
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.delenv("ADARAS_HOME", raising=False)
    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert package_data.data_dir("neuron_maps") == REPO / "neuron_maps"
    assert (package_data.data_dir("models") / "organism-modes" / "config.json").is_file()
