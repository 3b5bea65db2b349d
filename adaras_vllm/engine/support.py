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
    if getattr(vllm_config, "kv_transfer_config", None) is not None:
        reasons.append(
            "KV connectors (--kv-transfer-config, --kv-offloading-size / "
            "--kv-offloading-backend: LMCache, NIXL, Mooncake, P/D disaggregation, offloading) "
            "store or move KV outside the steered prefix-cache keys, so steered KV could reach "
            "unsteered requests or the reverse; not tested with steering; turn it off"
        )
    if getattr(vllm_config, "lora_config", None) is not None:
        reasons.append(
            "--enable-lora replaces down_proj with a LoRA layer when the model loads; steering "
            "with LoRA is not tested; turn it off"
        )
    model = getattr(vllm_config, "model_config", None)
    if (getattr(vllm_config, "diffusion_config", None) is not None
            or getattr(model, "is_diffusion", False)):
        reasons.append(
            "diffusion models (--diffusion-config, or a checkpoint with canvas_length) are not "
            "tested with steering; serve an autoregressive model"
        )
    reasons += _model_reasons(model)
    if parallel is not None and int(getattr(parallel, "prefill_context_parallel_size", 1) or 1) > 1:
        reasons.append(
            "--prefill-context-parallel-size > 1 splits each prefill into rank-local chunks "
            "that the per-token steering buffers do not follow; use 1"
        )
    reasons += _scheduler_reasons(getattr(vllm_config, "scheduler_config", None))
    return reasons


def _model_reasons(model: Any) -> list[str]:
    """What of the model and how vLLM runs it steering cannot follow."""
    if model is None:
        return []
    reasons = []
    using_transformers = getattr(model, "using_transformers_backend", None)
    if callable(using_transformers) and using_transformers():
        reasons.append(
            "the Transformers modelling backend (--model-impl transformers, or vLLM's fallback "
            "for an architecture it has no native model for) runs down_proj on batched "
            "[1, tokens, width] inputs the steering hook does not follow; use "
            "--model-impl vllm with a natively supported architecture"
        )
    if getattr(model, "runner_type", None) == "pooling":
        reasons.append(
            "--runner pooling (an embedding / reward / classification model) has no sampling "
            "parameters to carry steering, which is for generation; serve with --runner generate"
        )
    if getattr(model, "is_encoder_decoder", False):
        reasons.append(
            "encoder-decoder models are not tested with steering (its hooks and cache keys "
            "assume a decoder-only model); serve a decoder-only model"
        )
    return reasons


def _scheduler_reasons(scheduler: Any) -> list[str]:
    """A ``--scheduler-cls`` outside vLLM's ``Scheduler`` would miss the scheduler patches."""
    cls = getattr(scheduler, "scheduler_cls", None) if scheduler is not None else None
    if cls is None:
        return []
    from vllm.v1.core.sched.scheduler import Scheduler

    if isinstance(cls, str):
        from vllm.utils.import_utils import resolve_obj_by_qualname

        try:
            cls = resolve_obj_by_qualname(cls)
        except (ImportError, AttributeError, ValueError):
            return []  # vLLM itself refuses a class it cannot import
    if isinstance(cls, type) and issubclass(cls, Scheduler):
        return []
    name = getattr(cls, "__qualname__", repr(cls))
    return [
        f"--scheduler-cls {name} is not a subclass of vllm.v1.core.sched.scheduler.Scheduler, "
        "so the steering patches on Scheduler (map loading, prefix-cache skip, prefill "
        "bounds) would not apply; subclass Scheduler or leave --scheduler-cls unset"
    ]


def gate_unsupported_reasons(vllm_config: Any) -> list[str]:
    """What a map with a correctness gate cannot be served with, beyond the above."""
    parallel = getattr(vllm_config, "parallel_config", None)
    reasons = []
    if parallel is not None and int(getattr(parallel, "pipeline_parallel_size", 1)) > 1:
        reasons.append("a map with a correctness gate needs --pipeline-parallel-size 1: the "
                       "gate reads features of layers that other stages own; serve the map "
                       "without its gate or without pipeline parallelism")
    return reasons


def check_supported(vllm_config: Any, *, gated: bool = False) -> None:
    reasons = unsupported_reasons(vllm_config)
    if gated:
        reasons += gate_unsupported_reasons(vllm_config)
    if reasons:
        raise UnsupportedSteeringConfig(
            "adaras steering cannot be applied exactly with this engine: " + "; ".join(reasons)
        )
