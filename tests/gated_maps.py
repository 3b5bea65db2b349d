"""Tiny models' maps with a random correctness gate whose threshold splits the HF scores
of the test prompts in two, so both outcomes of the gate are exercised."""

from __future__ import annotations

from pathlib import Path

from conftest import CACHE, PROMPTS, cache_lock, encode_prompts, tiny_model
from hf_oracle import hf_gate_score

from adaras_vllm.maps import NeuronMap
from adaras_vllm.maps.gate_file import CorrectnessGate, random_gate


def gate_prompts(model_dir: Path) -> list[list[int]]:
    """Short and long prompts: one token, two tokens, and one split over 3+ chunks."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = encode_prompts(model_dir)
    long = tok.encode(" ".join(PROMPTS * 3))
    assert len(long) > 140, len(long)
    return [base[0][:1], base[1][:2], *base, long]


def gated_map_for(arch: str, seed: int, prompts: list[list[int]] | None = None
                  ) -> tuple[Path, Path, list[list[int]], list[float], CorrectnessGate]:
    """(model dir, gated map path, prompts, HF p_good per prompt, gate)."""
    model_dir, maps = tiny_model(arch)
    base = NeuronMap.load(maps["alpha_map"])
    gate = random_gate(24, 8, num_hidden_layers=base.num_hidden_layers,
                       intermediate_size=base.intermediate_size, seed=seed, scale=0.5)
    prompts = prompts if prompts is not None else gate_prompts(model_dir)
    scores = [hf_gate_score(model_dir, ids, gate) for ids in prompts]
    ordered = sorted(scores)
    mid = len(ordered) // 2
    assert ordered[mid] - ordered[mid - 1] > 1e-3, ordered  # a clean split
    gate.threshold = (ordered[mid - 1] + ordered[mid]) / 2
    path = CACHE / f"tiny-{arch}-gated_map-{seed}.safetensors"
    with cache_lock():
        base.renamed("gated_map").with_gate(gate).save(path)
    return model_dir, path, prompts, scores, gate
