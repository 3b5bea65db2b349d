"""Tiny, fully local models (config + trained tokenizer + random safetensors).

No model hub is reachable where this project is built and tested, so the demo and the
tests make their own models: real vLLM-loadable checkpoints of the supported
architectures, small enough for a 2-core CPU (head_dim 64, which vLLM's CPU attention
needs). A random neuron map for such a model comes with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from adaras_vllm.maps import NeuronMap

DEFAULT_CACHE = Path(os.environ.get("ADARAS_CACHE", Path.home() / ".cache" / "adaras-vllm"))
DEMO_MAP_NAME = "demo"

ARCHITECTURES = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A Qwen-style template so chat endpoints work on these models too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    words = (
        "the answer is question step first then add subtract multiply so we get think "
        "reason check result number total because therefore wait let me verify boxed"
    ).split()
    lines = []
    for i in range(400):
        a, b = (i * 37) % 97, (i * 53) % 89
        lines.append(f"Question: what is {a} + {b}? Thinking: {words[i % len(words)]} "
                     f"{a} plus {b} is {a + b}. The answer is \\boxed{{{a + b}}}.")
    lines.extend(" ".join(words[i:] + words[:i]) for i in range(len(words)))
    return lines


def build_tokenizer(out_dir: Path, vocab_size: int = 384) -> int:
    """Train a byte-level BPE tokenizer on a small built-in corpus; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return tok.get_vocab_size()


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "qwen3",
    *,
    seed: int = 0,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    initializer_range: float = 0.15,
) -> Path:
    """Write a random-weight checkpoint of ``arch`` to ``out_dir`` (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    out = Path(out_dir)
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out)
    head_dim = hidden_size // num_attention_heads
    config = AutoConfig.for_model(
        arch,
        architectures=[ARCHITECTURES[arch]],
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    gen = out / "generation_config.json"
    gen.write_text(json.dumps({"eos_token_id": 0, "pad_token_id": 0}))
    return out


def random_neuron_map(
    model_dir: str | Path,
    name: str,
    *,
    layers: list[int] | None = None,
    per_layer: int = 16,
    scale: float = 2.0,
    seed: int = 0,
    default_alpha: float = 0.3,
) -> NeuronMap:
    """A map of random neurons/weights for a local model (for demos and tests)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    gen = torch.Generator().manual_seed(seed)
    chosen = layers if layers is not None else list(range(cfg.num_hidden_layers))
    table = {}
    for layer in chosen:
        idx = torch.randperm(cfg.intermediate_size, generator=gen)[:per_layer].sort().values
        w = torch.randn(per_layer, generator=gen) * scale
        table[layer] = (idx.to(torch.int64), w.to(torch.float32))
    return NeuronMap.from_layers(
        name,
        table,
        num_hidden_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size,
        hidden_size=cfg.hidden_size,
        model=str(model_dir),
        model_type=cfg.model_type,
        criterion="random",
        default_alpha=default_alpha,
        source=f"random(seed={seed})",
    )


def demo_map_for(model_dir: str | Path, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """A random map named ``demo`` for a local model, built once into ``cache_dir``."""
    path = Path(cache_dir) / f"{Path(model_dir).name}-demo-map.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        random_neuron_map(model_dir, DEMO_MAP_NAME, layers=[1, 2], per_layer=16).save(path)
    return path


def demo_model_and_map(cache_dir: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """The built-in default until a trained model exists: a tiny Qwen3 and its map."""
    model_dir = build_tiny_model(Path(cache_dir) / "tiny-qwen3", "qwen3")
    return model_dir, demo_map_for(model_dir, cache_dir)
