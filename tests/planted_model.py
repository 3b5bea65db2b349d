"""A tiny random Qwen3 with two planted neurons whose behaviour we know exactly.

Two marker characters differ only in two hidden dimensions of equal magnitude (so every
RMSNorm sees the same scale): the GOOD marker sets ``D_GOOD``, the BAD marker ``D_BAD``.
Nothing reads or writes those dimensions except two MLP neurons:

- ``GOOD_NEURON`` (layer, index) reads ``D_GOOD``: it fires on the GOOD marker, and is
  exactly 0 on every other token (silu(0) * 0);
- ``BAD_NEURON`` reads ``D_BAD``: it fires only on the BAD marker.

Their ``down_proj`` columns are zero, so they change nothing downstream. Traces of good
reasoning carry the GOOD marker, bad ones the BAD marker: the criterion must rank these
two first, GOOD with a positive weight and BAD with a negative one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GOOD_MARKER, BAD_MARKER = "@", "~"
D_GOOD, D_BAD = 120, 121
GOOD_NEURON = (1, 77)
BAD_NEURON = (3, 200)
_SCALE = 4.0  # marker magnitude in its dimension (embeddings are ~0.15 elsewhere)
_GAIN = 8.0  # gate/up weight of a planted neuron on its dimension


def marker_ids(tokenizer) -> tuple[int, int]:  # noqa: ANN001
    ids = [tokenizer.convert_tokens_to_ids(c) for c in (GOOD_MARKER, BAD_MARKER)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise RuntimeError("marker characters are not single tokens of this tokenizer")
    return ids[0], ids[1]


def build_planted_model(base_dir: Path, out_dir: Path) -> Path:
    """Copy the tiny random Qwen3 at ``base_dir`` and plant the two neurons (idempotent)."""
    from transformers import AutoTokenizer

    if (out_dir / "model.safetensors").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base_dir, tmp)
    good_id, bad_id = marker_ids(AutoTokenizer.from_pretrained(str(tmp)))
    w = load_file(str(tmp / "model.safetensors"))
    dims = [D_GOOD, D_BAD]

    emb = w["model.embed_tokens.weight"]
    emb[:, dims] = 0.0
    emb[good_id] = emb[bad_id]  # identical except the marker dimensions
    emb[good_id, D_GOOD] = _SCALE
    emb[bad_id, D_BAD] = _SCALE

    num_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("model.layers."))
    for layer in range(num_layers):
        p = f"model.layers.{layer}."
        for reader in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "mlp.gate_proj", "mlp.up_proj"):
            w[p + reader + ".weight"][:, dims] = 0.0  # nobody reads the marker dims ...
        for writer in ("self_attn.o_proj", "mlp.down_proj"):
            w[p + writer + ".weight"][dims, :] = 0.0  # ... and nobody writes them
    for (layer, neuron), dim in ((GOOD_NEURON, D_GOOD), (BAD_NEURON, D_BAD)):
        p = f"model.layers.{layer}.mlp."
        for proj in ("gate_proj", "up_proj"):
            row = w[p + proj + ".weight"][neuron]
            row.zero_()
            row[dim] = _GAIN
        w[p + "down_proj.weight"][:, neuron] = 0.0  # fires, but changes nothing downstream
    save_file({k: v.contiguous() for k, v in w.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def planted_traces(n_per_label: int, seed: int = 0) -> list[dict]:
    """Traces in our format: varied texts; good ones carry GOOD markers, bad ones BAD."""
    words = ("the answer is question step first then add subtract so we get think reason "
             "check result number total because therefore wait let me verify").split()
    gen = torch.Generator().manual_seed(seed)
    traces = []
    for label in (True, False):
        marker = GOOD_MARKER if label else BAD_MARKER
        for k in range(n_per_label):
            n_words = int(torch.randint(8, 40, (1,), generator=gen))
            picks = torch.randint(0, len(words), (n_words,), generator=gen).tolist()
            text = [words[i] for i in picks]
            for pos in torch.randint(0, n_words, (3,), generator=gen).tolist():
                text.insert(pos, marker)
            a, b = (int(v) for v in torch.randint(10, 99, (2,), generator=gen))
            traces.append({
                "id": f"p{k}", "attempt": 0 if label else 1,
                "question": f"what is {a} + {b}?", "thinking": " " + " ".join(text),
                "answer": str(a + b) if label else str(a + b + 1), "gold": str(a + b),
                "is_good": label,
            })
    return traces
