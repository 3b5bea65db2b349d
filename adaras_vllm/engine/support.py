"""Engine configurations steering cannot follow exactly, refused when the engine starts.

Each check names the vLLM option, so the operator knows what to turn off; steering that
silently lands on the wrong tokens is worse than no server.
"""

from __future__ import annotations

from typing import Any


class UnsupportedSteeringConfig(ValueError):
    """The engine is configured in a way the steering hooks cannot serve exactly."""


def unsupported_reasons(vllm_config: Any) -> list[str]:
    """One line per option of ``vllm_config`` that steering cannot honour."""
    reasons = []
    parallel = getattr(vllm_config, "parallel_config", None)
    if parallel is not None and getattr(parallel, "use_ubatching", False):
        reasons.append(
            "micro-batching (--enable-dbo / --ubatch-size > 1) runs the model on token slices "
            "that the per-token steering buffers do not follow; turn it off"
        )
    cache = getattr(vllm_config, "cache_config", None)
    if cache is not None and getattr(cache, "kv_sharing_fast_prefill", False):
        reasons.append(
            "--kv-sharing-fast-prefill runs some layers on a subset of the tokens, so their "
            "rows are not the step's tokens; turn it off"
        )
    if getattr(vllm_config, "speculative_config", None) is not None:
        reasons.append(
            "speculative decoding (--speculative-config) verifies draft tokens in layouts the "
            "steering buffers do not follow; turn it off"
        )
    return reasons


def gate_unsupported_reasons(vllm_config: Any) -> list[str]:
    """What a map with a correctness gate cannot be served with, beyond the above."""
    parallel = getattr(vllm_config, "parallel_config", None)
    reasons = []
    if parallel is not None and int(getattr(parallel, "pipeline_parallel_size", 1)) > 1:
        reasons.append("a map with a correctness gate needs --pipeline-parallel-size 1: the "
                       "gate reads features of layers that other stages own; serve the map "
                       "without its gate or without pipeline parallelism")
    if parallel is not None and int(getattr(parallel, "data_parallel_size", 1)) > 1:
        reasons.append("a map with a correctness gate needs --data-parallel-size 1: gate "
                       "results are read back from the first engine only; run one adaras "
                       "serve per engine behind a proxy")
    return reasons


def check_supported(vllm_config: Any, *, gated: bool = False) -> None:
    reasons = unsupported_reasons(vllm_config)
    if gated:
        reasons += gate_unsupported_reasons(vllm_config)
    if reasons:
        raise UnsupportedSteeringConfig(
            "adaras steering cannot be applied exactly with this engine: " + "; ".join(reasons)
        )
