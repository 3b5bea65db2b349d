"""Every vLLM attribute adaras patches exists, with the parameters our wrappers rely on,
in the installed vLLM; the patch layer refuses another vLLM in one sentence, before
patching anything. Fast: no engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from adaras_vllm.engine import patches
from adaras_vllm.engine.adoption import PATCHES as ADOPTION_PATCHES
from adaras_vllm.engine.patches import Patch, UnsupportedVllmError
from adaras_vllm.engine.plugin import PLUGIN_PATCHES, steering_patches
from adaras_vllm.server.api_processes import API_PROCESS_PATCHES, LAUNCHER_PATCHES
from adaras_vllm.server.upstream_guards import PATCHES as SERVER_PATCHES

from conftest import ENV_VAR, map_spec, tiny_model

ALL_PATCHES = (*PLUGIN_PATCHES, *ADOPTION_PATCHES, *steering_patches(), *SERVER_PATCHES,
               *LAUNCHER_PATCHES, *API_PROCESS_PATCHES)


@pytest.mark.parametrize("patch", ALL_PATCHES, ids=lambda p: p.target)
def test_every_patch_target_exists_with_the_expected_parameters(patch: Patch):
    where = patches.resolve(patch)
    assert where is not None or patch.optional, f"{patch.target} did not resolve"


def test_every_required_patch_target_resolves_here():
    """Optional targets are for other builds; on this one every module imports."""
    assert all(patches.resolve(p) is not None for p in ALL_PATCHES)


def test_the_patch_inventory_lists_every_patch():
    doc = patches.__doc__ or ""
    missing = [p.target for p in ALL_PATCHES if f"``{p.target}``" not in doc]
    assert not missing, f"add these to the inventory in engine/patches.py: {missing}"


def test_every_patch_says_why_and_when_it_can_go():
    assert all(p.why.strip() and p.until.strip() for p in ALL_PATCHES)


def test_the_installed_vllm_is_a_supported_version():
    patches.check_vllm_version()


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0", "unknown"])
def test_an_unsupported_vllm_version_is_refused_in_one_sentence(version: str):
    with pytest.raises(UnsupportedVllmError) as caught:
        patches.check_vllm_version(version)
    message = str(caught.value)
    assert "\n" not in message and f"vLLM {version} is installed" in message
    assert "supports vLLM >=0.32,<0.33" in message


REFUSED_AT_REGISTER = """
import json, sys
import vllm
vllm.__version__ = "0.40.1"
from adaras_vllm.engine import patches, plugin
from vllm.v1.engine.input_processor import InputProcessor
try:
    plugin.register()
    outcome = "registered"
except patches.UnsupportedVllmError as e:
    outcome = str(e)
print("RESULT " + json.dumps({"outcome": outcome, "applied": patches.applied(),
                              "front_end": patches.is_patched(InputProcessor.process_inputs)}))
"""


def test_a_faked_unsupported_vllm_is_refused_at_register_with_nothing_patched():
    _, maps = tiny_model("qwen3")
    env = {**os.environ, ENV_VAR: map_spec(maps)}
    out = subprocess.run([sys.executable, "-c", REFUSED_AT_REGISTER], env=env,
                         capture_output=True, text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    result = json.loads(line[0].removeprefix("RESULT "))
    assert result["outcome"].startswith("adaras-vllm supports vLLM >=0.32,<0.33 but vLLM 0.40.1")
    assert result["applied"] == [] and result["front_end"] is False


@pytest.fixture
def target_module(monkeypatch):
    """A stand-in module to patch, so these tests leave vLLM itself alone."""
    module = types.ModuleType("adaras_patch_target")

    class Thing:
        def method(self, a, b):
            return a + b

    module.Thing = Thing
    monkeypatch.setitem(sys.modules, "adaras_patch_target", module)
    yield module
    patches.undo([t for t in patches.applied() if t.startswith("adaras_patch_target:")])


def _doubling(original):
    def method(self, a, b):
        return 2 * original(self, a, b)

    return method


def test_a_patch_is_applied_once_and_undo_restores_the_original(target_module):
    original = target_module.Thing.method
    patch = Patch("adaras_patch_target:Thing.method", params=("self", "a", "b"),
                  wrap=_doubling, why="test", until="never")
    assert patches.apply([patch]) == [patch.target]
    assert patches.apply([patch]) == []
    assert target_module.Thing().method(1, 2) == 6  # wrapped once, not twice
    patches.undo([patch.target])
    assert target_module.Thing.method is original


def test_a_target_with_other_parameters_is_refused_naming_it(target_module):
    patch = Patch("adaras_patch_target:Thing.method", params=("self", "x"), wrap=_doubling,
                  why="test", until="never")
    with pytest.raises(UnsupportedVllmError,
                       match=r"patch of adaras_patch_target:Thing.method: it takes "
                             r"\(self, a, b\), not \(self, x, \.\.\.\)"):
        patches.apply([patch])


def test_one_bad_target_leaves_every_other_patch_unapplied(target_module):
    original = target_module.Thing.method
    good = Patch("adaras_patch_target:Thing.method", params=("self",), wrap=_doubling,
                 why="test", until="never")
    bad = Patch("adaras_patch_target:Thing.gone", params=("self",), wrap=_doubling,
                why="test", until="never")
    with pytest.raises(UnsupportedVllmError, match=r"Thing.gone: it does not exist"):
        patches.apply([good, bad])
    assert target_module.Thing.method is original
    assert good.target not in patches.applied()


def test_an_added_attribute_must_not_exist_already(target_module):
    clash = Patch("adaras_patch_target:Thing.method", add=lambda self: None, why="test",
                  until="never")
    with pytest.raises(UnsupportedVllmError, match="already exists"):
        patches.apply([clash])


@pytest.mark.parametrize("version, parsed", [("0.32.0", (0, 32)), ("0.32.0+cpu", (0, 32)),
                                             ("0.33rc1", (0, 33)), ("1.2", (1, 2)),
                                             ("dev", None)])
def test_the_version_is_read_as_major_and_minor(version, parsed):
    assert patches._major_minor(version) == parsed


def test_a_static_method_target_is_refused_not_turned_into_a_method(target_module):
    target_module.Thing.helper = staticmethod(lambda a: a)
    patch = Patch("adaras_patch_target:Thing.helper", params=("a",), wrap=_doubling,
                  why="test", until="never")
    with pytest.raises(UnsupportedVllmError, match="staticmethod"):
        patches.apply([patch])


def test_a_subclass_inheriting_a_patched_method_is_not_wrapped_twice(target_module):
    class Child(target_module.Thing):
        pass

    target_module.Child = Child
    base = Patch("adaras_patch_target:Thing.method", params=("self", "a", "b"),
                 wrap=_doubling, why="test", until="never")
    child = Patch("adaras_patch_target:Child.method", params=("self", "a", "b"),
                  wrap=_doubling, why="test", until="never")
    assert patches.apply([base, child]) == [base.target]
    assert Child().method(1, 2) == 6
