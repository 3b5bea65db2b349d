"""Keep prefix caching correct under steering.

A block's KV depends on steering only if the block holds a steered position
(``t >= prompt_len - 1``): earlier positions are computed exactly as without the plugin,
causally, so those blocks stay shared with unsteered requests. Every block holding a
steered position gets an extra hash key naming the (map, alpha) that produced it; since
block hashes are chained, every later block differs too.

Note the last prompt token is always recomputed, so two identical steered requests share
exactly the blocks before position ``prompt_len - 1``: the same blocks an unsteered
request shares.
"""

from __future__ import annotations

import functools
from typing import Any

from .params import SteeringParamError
from .registry import MapRegistry, active_registry


def steering_block_key(
    registry: MapRegistry, request: Any, end_token_idx: int
) -> tuple[str, str, str, float, int, str] | None:
    """The extra hash key for the block ending at ``end_token_idx``, or None.

    The key names the prompt length too: which positions are steered depends on it, so
    a continuation (a longer prompt over the same tokens) must not reuse KV that was
    steered at positions it leaves unsteered.
    """
    params = getattr(request, "sampling_params", None)
    if params is None or not registry:
        return None
    try:
        p = registry.parse(params.extra_args)
    except SteeringParamError:
        return None  # such a request is refused by the front end and never steered
    # The block holds positions [start, end); steered ones are t >= P - 1.
    if not p.steered or end_token_idx < request.num_prompt_tokens:
        return None
    return (
        "adaras",
        p.map_name,
        registry.map_fingerprint(p.map_name),
        p.alpha,
        int(request.num_prompt_tokens),
        p.mode,  # adaptive: steered or not as its gate decided, never shared with always
    )


def _with_steering_key(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):  # noqa: ANN001, ANN202
        keys, next_mm_idx = original(request, start_token_idx, end_token_idx, start_mm_idx)
        key = steering_block_key(active_registry(), request, end_token_idx)
        if key is None:
            return keys, next_mm_idx
        return (*(keys or ()), key), next_mm_idx

    generate_block_hash_extra_keys._adaras = True
    return generate_block_hash_extra_keys


def patch_prefix_cache_keys() -> None:
    """Wrap the extra-key function everywhere vLLM bound it by name."""
    from vllm.v1.core import block_pool, kv_cache_utils

    modules = [kv_cache_utils, block_pool]
    try:
        from vllm.v1.simple_kv_offload import manager

        modules.append(manager)
    except ImportError:
        pass
    for mod in modules:
        fn = getattr(mod, "generate_block_hash_extra_keys", None)
        if fn is not None and not getattr(fn, "_adaras", False):
            mod.generate_block_hash_extra_keys = _with_steering_key(fn)
