"""A KV-cache size that fits the job and the machine, for engines started on CPU.

vLLM's default memory fraction (``gpu_memory_utilization`` 0.92) assumes an accelerator the
engine has to itself. On the CPU backend it is a share of the machine's RAM, checked against
NUMA node 0 at start-up, and an ordinary machine fails it. Every adaras command that starts
an engine asks `fit_engine_memory` for a size when the user gave neither memory flag: enough
KV cache for the job (its batch at its context length), capped to a share of the memory
available now, and never less than one full-length sequence. It says what it chose.
Explicit flags always win, and on an accelerator vLLM's own sizing is kept.
"""

from __future__ import annotations

import sys
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
FLOOR_BYTES = 64 * MIB
SHARE_OF_AVAILABLE = 0.4  # leaves room for weights, activations and the other processes
MEMORY_KEYS = ("kv_cache_memory_bytes", "gpu_memory_utilization")


def on_cpu() -> bool:
    """Whether vLLM would run on its CPU backend here."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _dtype_bytes(dtype: str | None, config: Any) -> int:
    name = str(dtype or "auto").lower()
    if name == "auto":
        name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
                   or "bfloat16").lower()
    return 4 if name in ("float32", "float", "torch.float32", "fp32") else 2


def kv_bytes_per_token(config: Any, dtype: str | None = "auto") -> int:
    """Key + value bytes one token occupies across all layers."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * _dtype_bytes(dtype, text)


def choose_kv_cache_bytes(config: Any, *, dtype: str | None, max_model_len: int | None,
                          max_num_seqs: int, tensor_parallel_size: int = 1,
                          available: int | None = None) -> tuple[int, str]:
    """(bytes per worker, a sentence saying why) for a job of ``max_num_seqs`` sequences."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    length = int(max_model_len or getattr(text, "max_position_embeddings", 4096))
    per_token = kv_bytes_per_token(config, dtype)
    tp = max(1, tensor_parallel_size)
    need = per_token * length * max_num_seqs // tp
    one_sequence = per_token * length // tp
    available = available_memory_bytes() if available is None else available
    cap = int(available * SHARE_OF_AVAILABLE) // tp
    chosen = max(FLOOR_BYTES, one_sequence, min(need, cap))
    if chosen > available * 0.8 / tp:
        raise ValueError(
            f"one {length}-token sequence needs {one_sequence / GIB:.1f} GiB of KV cache per "
            f"worker but only {available / GIB:.1f} GiB of memory is available; pass a "
            "smaller --max-model-len (or --kv-cache-gib / --gpu-memory-utilization yourself)")
    why = (f"{max_num_seqs} sequences x {length} tokens need {need / MIB:.0f} MiB; "
           f"{SHARE_OF_AVAILABLE:.0%} of the {available / GIB:.1f} GiB available is "
           f"{cap / MIB:.0f} MiB")
    return chosen, why


def fit_engine_memory(model: str, kwargs: dict[str, Any], *, who: str = "adaras") -> dict[str, Any]:
    """``kwargs`` for ``vllm.LLM``, plus ``kv_cache_memory_bytes`` on CPU when the caller set
    neither memory option; prints the choice to stderr."""
    if any(kwargs.get(k) is not None for k in MEMORY_KEYS) or not on_cpu():
        return kwargs
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=bool(
            kwargs.get("trust_remote_code")))
    except (OSError, ValueError) as error:  # vLLM reads configs it cannot: leave it to vLLM
        reason = " ".join(str(error).split())[:300]
        print(f"{who}: cannot size the CPU KV cache: {model!r} has no config transformers "
              f"can read ({reason}); leaving vLLM's default (give --kv-cache-gib or "
              "--gpu-memory-utilization if it does not fit)", file=sys.stderr, flush=True)
        return kwargs
    # vLLM's CPU default is 256 sequences per step unless the command set one.
    chosen, why = choose_kv_cache_bytes(
        config, dtype=kwargs.get("dtype"), max_model_len=kwargs.get("max_model_len"),
        max_num_seqs=int(kwargs.get("max_num_seqs") or 256),
        tensor_parallel_size=int(kwargs.get("tensor_parallel_size") or 1))
    print(f"{who}: CPU engine: KV cache {chosen / MIB:.0f} MiB ({why}); choose with "
          "--kv-cache-gib or --gpu-memory-utilization", file=sys.stderr, flush=True)
    return {**kwargs, "kv_cache_memory_bytes": chosen}
