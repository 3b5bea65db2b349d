"""The reference: HF transformers with the paper's forward-pre-hook on ``down_proj``.

The hook adds ``alpha * w`` to the last position of every forward call; under greedy
``generate`` with a KV cache that is exactly positions ``t >= prompt_len - 1``. For
``steer_positions`` it skips the decode calls (``last_prompt``: only ``P-1``) or the prompt
call (``generated``: only ``t >= P``). fp32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from adaras_vllm.maps import NeuronMap


@lru_cache(maxsize=4)
def load_hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    # Like vLLM's ignore_eos: EOS is an ordinary token that neither stops nor is masked.
    model.generation_config.eos_token_id = None
    return model.eval()


def _steering_hook(indices: torch.Tensor, weights: torch.Tensor, alpha: float,
                   positions: str = "from_last_prompt"):
    """The paper's hook; ``positions`` picks its calls: the prompt's (its last position is
    P-1) and every decode step's (``from_last_prompt``), the prompt's only
    (``last_prompt``), the decode steps' only (``generated``)."""
    calls = [0]

    def hook(module, args):  # noqa: ANN001, ANN202
        prompt_call = calls[0] == 0
        calls[0] += 1
        if (positions == "last_prompt" and not prompt_call) or (
                positions == "generated" and prompt_call):
            return None
        x = args[0].clone()
        x[:, -1, indices] += alpha * weights
        return (x,)

    return hook


def hf_steered_generate(
    model_dir: str | Path,
    prompt_ids: list[int],
    max_new_tokens: int,
    neuron_map: NeuronMap | None = None,
    alpha: float = 0.0,
    positions: str = "from_last_prompt",
) -> list[int]:
    """Greedy new token ids of the HF model with the paper's steering hooks installed."""
    model = load_hf_model(str(model_dir))
    handles = []
    if neuron_map is not None and alpha != 0.0:
        for layer, (idx, w) in neuron_map.layers.items():
            down = model.model.layers[layer].mlp.down_proj
            handles.append(down.register_forward_pre_hook(
                _steering_hook(idx, w, alpha, positions)))
    try:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
    finally:
        for h in handles:
            h.remove()
    return out[0, len(prompt_ids):].tolist()


def hf_gate_features(model_dir: str | Path, prompt_ids: list[int], gate) -> torch.Tensor:  # noqa: ANN001
    """``[P-1, N]``: the ``down_proj`` inputs at the gate's features, positions 0..P-2,
    from forward-pre-hooks on the HF model (one forward over the prompt)."""
    model = load_hf_model(str(model_dir))
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            seen[layer] = args[0][0].detach().clone()

        return hook

    handles = [model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(keep(layer))
               for layer in sorted(set(gate.layers.tolist()))]
    try:
        with torch.no_grad():
            model(torch.tensor([prompt_ids]))
    finally:
        for h in handles:
            h.remove()
    cols = [seen[layer][: len(prompt_ids) - 1, neuron]
            for layer, neuron in zip(gate.layers.tolist(), gate.neurons.tolist())]
    return torch.stack(cols, dim=1)


def hf_gate_score(model_dir: str | Path, prompt_ids: list[int], gate) -> float:  # noqa: ANN001
    """The paper's gate on the HF model: p_good from positions 0..P-2."""
    return gate.score(hf_gate_features(model_dir, prompt_ids, gate))
