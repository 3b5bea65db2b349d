"""The paper's way of capturing activations: HF transformers with a forward-pre-hook.

One trace at a time through ``AutoModelForCausalLM``, a pre-hook on every
``mlp.down_proj`` averaging its input over the trace's tokens. It is the reference the
in-engine capture is tested against and the baseline its benchmark is measured against.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

_DOWN_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.down_proj$")


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()


def hf_trace_means(model, prompts: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:  # noqa: ANN001
    """Yield each prompt's ``[layers, intermediate]`` mean ``down_proj`` input (float32)."""
    downs = {
        int(m.group(1)): mod
        for name, mod in model.named_modules()
        if (m := _DOWN_PROJ.search(name)) is not None
    }
    if not downs:
        raise ValueError("the model has no layers.N.mlp.down_proj modules to hook")
    layers = sorted(downs)
    current: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            current[layer] = args[0][0].float().mean(dim=0)

        return hook

    handles = [downs[layer].register_forward_pre_hook(hook_for(layer)) for layer in layers]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for ids in prompts:
                current.clear()
                model(torch.tensor([list(ids)], device=device), use_cache=False)
                yield torch.stack([current[layer] for layer in layers]).cpu().numpy()
    finally:
        for h in handles:
            h.remove()
