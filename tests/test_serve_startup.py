"""``adaras serve`` start-up: steering installed in every process whatever the start method,
and configurations that cannot be served as asked refused before any engine starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ENV_VAR, REPO

from adaras_vllm.maps import NeuronMap
from adaras_vllm.server.app import ServeConfigError

ORGANISM_MAP = REPO / "neuron_maps" / "organism-arith.safetensors"

FORKED_CHILD_CHECK = textwrap.dedent("""
    import json, os, sys
    import vllm.plugins as plugins
    from adaras_vllm.server.app import prepare
    args, policy, keys = prepare(sys.argv[1:])
    loaded_before_maps = plugins.plugins_loaded
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # what an engine process forked from the API server would hold
        from vllm.v1.core import kv_cache_utils
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
        from adaras_vllm.engine.patches import is_patched
        from adaras_vllm.engine.plugin import installed
        report = {
            "installed": installed(),
            "front_end": is_patched(InputProcessor.process_inputs),
            "add_request": is_patched(AsyncLLM.add_request),
            "runner": is_patched(GPUModelRunner._prepare_inputs),
            "prefix_cache": is_patched(kv_cache_utils.generate_block_hash_extra_keys),
        }
        os.write(w, json.dumps(report).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    child = json.loads(os.read(r, 65536))
    print("RESULT " + json.dumps({"child": child, "loaded_before_maps": loaded_before_maps,
                                  "method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")}))
""")


def _run_prepare_and_fork(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_VAR, "VLLM_WORKER_MULTIPROC_METHOD")}
    proc = subprocess.run([sys.executable, "-c", FORKED_CHILD_CHECK, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_a_process_forked_after_start_up_has_every_steering_patch():
    """vLLM loads plugins while ``adaras serve`` builds its parser, before the maps are
    known; an engine forked from the API process (CUDA's default) must still steer."""
    result = _run_prepare_and_fork("--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}")
    assert result["loaded_before_maps"] is True  # the situation that used to lose steering
    assert result["child"] == {"installed": True, "front_end": True, "add_request": True,
                               "runner": True, "prefix_cache": True}


def test_engine_processes_are_spawned_as_vllm_serve_does():
    result = _run_prepare_and_fork("--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}")
    assert result["method"] == "spawn"


def _prepare(monkeypatch, *argv: str):
    from adaras_vllm.server.app import prepare

    for var in (ENV_VAR, "ADARAS_DEFAULT_STEER_ALPHA", "ADARAS_MAX_STEER_ALPHA",
                "ADARAS_DEFAULT_STEER_MODE",
                "VLLM_WORKER_MULTIPROC_METHOD"):
        monkeypatch.setenv(var, "")  # recorded, so what prepare() sets is undone after
        monkeypatch.delenv(var)
    return prepare(list(argv))


def test_a_map_default_alpha_above_the_bound_refuses_to_start(monkeypatch, tmp_path):
    strong = tmp_path / "strong.safetensors"
    NeuronMap.from_layers("strong", {0: ([1], [1.0])}, num_hidden_layers=4,
                          intermediate_size=512, hidden_size=128,
                          default_alpha=9.0).save(strong)
    with pytest.raises(ServeConfigError, match="map 'strong' default_alpha 9 exceeds the bound 8"):
        _prepare(monkeypatch, "--model", "m", "--neuron-map", f"strong={strong}")


def test_api_servers_with_headless_are_refused_naming_both_flags(monkeypatch):
    with pytest.raises(ServeConfigError, match="--api-server-count cannot be used with "
                                               "--headless"):
        _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}",
                 "--api-server-count", "2", "--headless")


def test_the_engine_configuration_carries_the_maps_bounds_and_defaults(monkeypatch):
    from adaras_vllm.engine.steering_config import SteeringConfig

    args, _, _ = _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}",
                          "--max-steer-alpha", "5", "--default-steer-alpha", "-1")
    carried = SteeringConfig.from_dict(args.additional_config["adaras"])
    assert [(m.name, m.path) for m in carried.maps] == [("arith", str(ORGANISM_MAP))]
    assert (carried.defaults.max_alpha, carried.defaults.default_alpha) == (5.0, -1.0)


def test_an_adaras_entry_in_additional_config_is_refused_beside_neuron_maps(monkeypatch):
    with pytest.raises(ServeConfigError, match="already has an 'adaras' entry"):
        _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}",
                 "--additional-config", '{"adaras": {}}')


def test_a_non_positive_body_limit_is_refused(monkeypatch):
    with pytest.raises(ServeConfigError, match="--max-request-body-bytes must be a positive"):
        _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}",
                 "--max-request-body-bytes", "0")


def test_vllm_api_key_from_the_environment_protects_every_route(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    _, _, keys = _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}")
    assert keys == ["from-env"]


class _EngineReporting:
    def __init__(self, statuses: list[dict]) -> None:
        self.statuses = statuses

    async def collective_rpc(self, method: str, args: tuple = ()) -> list[dict]:
        assert method == "adaras_steering_status"
        return self.statuses


def _organism_config():
    from adaras_vllm.engine.steering_config import SteeringConfig

    return SteeringConfig.from_spec(f"arith={ORGANISM_MAP}")[0]


def _status(front_end_config, /, **changes) -> dict:
    status = {"installed": True, "layers": [0, 1], "tracked_requests": 0, "rank": 0,
              "dp_rank": 0, "node": "node-a", "config": front_end_config.fingerprint(),
              "map_fingerprints": {m.name: m.fingerprint for m in front_end_config.maps},
              "self_test": {"ran": True, "changed": True}}
    return {**status, **changes}


def _check(config, statuses):
    import asyncio

    from adaras_vllm.server.app import check_engine_steers

    return asyncio.run(check_engine_steers(_EngineReporting(statuses), config))


def test_serving_starts_when_every_worker_steers_with_the_front_ends_configuration():
    config = _organism_config()
    assert _check(config, [_status(config), _status(config, rank=1)]) == [0, 1]


def test_serving_is_refused_when_a_worker_reports_no_steering_naming_rank_and_node():
    config = _organism_config()
    bare = {"installed": False, "layers": [], "rank": 1, "dp_rank": 1, "node": "node-b"}
    with pytest.raises(ServeConfigError, match="worker rank 1 of DP rank 1 on node node-b "
                                               "has no steering installed"):
        _check(config, [_status(config), bare])


def test_serving_is_refused_when_a_worker_loaded_another_map_naming_the_file():
    config = _organism_config()
    other = _status(config, rank=1, node="node-b", config="0" * 16,
                    map_fingerprints={"arith": "f" * 16})
    with pytest.raises(ServeConfigError, match=rf"rank 1 .* node-b steers with another "
                                               rf"configuration; maps that differ: arith "
                                               rf"\({ORGANISM_MAP}\): f{{16}}"):
        _check(config, [_status(config), other])


def test_a_worker_with_other_defaults_is_refused_naming_the_field():
    config = _organism_config()
    theirs = {**config.to_dict(), "max_alpha": 2.0}
    other = _status(config, config="1" * 16, steering_config=theirs)
    with pytest.raises(ServeConfigError, match=r"max_alpha: 8\.0 here, 2\.0 there"):
        _check(config, [other])


def test_a_pipeline_stage_that_cannot_see_output_may_skip_the_self_test():
    config = _organism_config()
    skipped = _status(config, self_test={"ran": False, "skipped": "no output"})
    assert _check(config, [_status(config), skipped]) == [0, 1]


def test_serving_is_refused_when_a_worker_did_not_run_the_self_test():
    config = _organism_config()
    with pytest.raises(ServeConfigError, match="did not run the start-up steering self-test"):
        _check(config, [_status(config, self_test=None)])


def test_a_default_adaptive_mode_without_a_gate_on_the_default_map_refuses_to_start(
        monkeypatch, tmp_path):
    plain = tmp_path / "plain.safetensors"
    NeuronMap.from_layers("plain", {0: ([1], [1.0])}, num_hidden_layers=4,
                          intermediate_size=512, hidden_size=128).save(plain)
    with pytest.raises(ServeConfigError, match="no correctness gate"):
        _prepare(monkeypatch, "--model", "m", "--neuron-map", f"plain={plain}",
                 "--default-steer-mode", "adaptive")


def test_a_default_adaptive_mode_starts_when_the_default_map_has_a_gate(monkeypatch):
    _prepare(monkeypatch, "--model", "m", "--neuron-map", f"arith={ORGANISM_MAP}",
             "--default-steer-mode", "adaptive")


def test_organism_with_a_named_model_is_refused(monkeypatch):
    with pytest.raises(ServeConfigError, match="--organism picks the model when none is named"):
        _prepare(monkeypatch, "--model", "m", "--organism", "arith")


MAPS_SET_AFTER_PLUGINS_LOADED = textwrap.dedent("""
    import json, os, sys
    os.environ.pop("ADARAS_NEURON_MAPS", None)
    import vllm.plugins as plugins
    from vllm.plugins import load_general_plugins
    load_general_plugins()  # a plain engine first: vLLM never calls the entry point again
    from adaras_vllm.engine.patches import is_patched
    from adaras_vllm.engine.plugin import installed
    before = installed()
    os.environ["ADARAS_NEURON_MAPS"] = sys.argv[1]
    from vllm.engine.arg_utils import EngineArgs
    EngineArgs(model=sys.argv[2])  # what LLM(...) builds first
    from vllm.v1.engine.input_processor import InputProcessor
    print("RESULT " + json.dumps({"before": before, "after": installed(),
                                  "front_end": is_patched(InputProcessor.process_inputs)}))
""")


def test_maps_set_after_vllm_loaded_its_plugins_install_steering_at_the_next_engine():
    """A notebook or test session that built a plain engine first, then set the maps: the
    next engine's front end must decide steering (bounds, 400s, adaptive's cache rule)."""
    from adaras_vllm.organism.assets import ORGANISM_DIR

    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    proc = subprocess.run([sys.executable, "-c", MAPS_SET_AFTER_PLUGINS_LOADED,
                           f"arith={ORGANISM_MAP}", str(ORGANISM_DIR)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == {"before": False, "after": True,
                                                        "front_end": True}
