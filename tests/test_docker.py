"""The container files: Dockerfiles lint clean (hadolint) and the compose file validates
against the Compose specification's JSON schema. (No Docker engine runs here.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SCHEMA_WHEELS = Path(sys.prefix) / "share" / "compose-spec"


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    wheels = sorted(SCHEMA_WHEELS.glob("docker_compose-*.whl"))
    assert wheels, f"no Compose schema under {SCHEMA_WHEELS}: run 'make install'"
    with zipfile.ZipFile(wheels[-1]) as whl:
        return json.loads(whl.read("compose/config/compose_spec.json"))


def _errors(schema: dict, doc: dict) -> list[str]:
    return [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(doc)]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_lints_clean(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    assert hadolint, "hadolint not installed: run 'make install'"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKER / dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_image_is_built_on_the_pinned_vllm_release():
    first = next(line for line in (DOCKER / "Dockerfile").read_text().splitlines()
                 if line.startswith("FROM"))
    assert first == "FROM vllm/vllm-openai:v0.32.0"


def test_compose_file_validates_against_the_compose_specification(compose_schema):
    doc = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert _errors(compose_schema, doc) == []


def test_the_schema_check_rejects_a_broken_compose_file(compose_schema):
    assert _errors(compose_schema, {"services": {"x": {"ports": 5, "gpus_please": True}}})


def test_gpu_service_reserves_gpus_checks_health_and_mounts_maps_and_cache():
    svc = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]["adaras"]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert "../neuron_maps:/maps:ro" in svc["volumes"]
    assert any(v.endswith(":/root/.cache/huggingface") for v in svc["volumes"])
    assert "ADARAS_NEURON_MAPS" in svc["environment"]


def test_cpu_service_is_a_profile_on_the_cpu_build():
    svc = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]["adaras-cpu"]
    assert svc["profiles"] == ["cpu"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "deploy" not in svc
