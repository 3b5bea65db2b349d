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

from .patches import Patch
from .registry import MapRegistry, active_registry
from .resolved import resolved_of


def steering_block_key(
    registry: MapRegistry, request: Any, end_token_idx: int
) -> tuple[str, str, str, float, int, str, str] | None:
    """The extra hash key for the block ending at ``end_token_idx``, or None.

    The key names the prompt length too: which positions are steered depends on it, so
    a continuation (a longer prompt over the same tokens) must not reuse KV that was
    steered at positions it leaves unsteered.
    """
    if not registry:
        return None
    p = resolved_of(request, registry.names, registry.gated_names)
    # The block holds positions [start, end); the first steered one changes its own KV and,
    # through attention, every later position's: key every block from it on. With
    # ``generated`` the prompt's blocks stay unkeyed, shared with unsteered requests.
    first, _ = p.first_and_last_steered(int(request.num_prompt_tokens))
    if not p.steered or end_token_idx <= first:
        return None
    return (
        "adaras",
        p.map_name,
        registry.map_fingerprint(p.map_name),
        p.alpha,
        int(request.num_prompt_tokens),
        p.mode,  # adaptive: steered or not as its gate decided, never shared with always
        p.positions,
    )


def _with_steering_key(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):  # noqa: ANN001, ANN202
        keys, next_mm_idx = original(request, start_token_idx, end_token_idx, start_mm_idx)
        key = steering_block_key(active_registry(), request, end_token_idx)
        if key is None:
            return keys, next_mm_idx
        return (*(keys or ()), key), next_mm_idx

    return generate_block_hash_extra_keys


_WHY = "steered blocks get their own prefix-cache key"
_UNTIL = "vLLM takes plugin extra keys per block"
#: vLLM binds the extra-key function by name in each of these modules: wrap it in each.
PATCHES = (
    Patch("vllm.v1.core.kv_cache_utils:generate_block_hash_extra_keys",
          params=("request", "start_token_idx", "end_token_idx", "start_mm_idx"),
          wrap=_with_steering_key, why=_WHY, until=_UNTIL),
    Patch("vllm.v1.core.block_pool:generate_block_hash_extra_keys",
          params=("request", "start_token_idx", "end_token_idx", "start_mm_idx"),
          wrap=_with_steering_key, why=_WHY, until=_UNTIL),
    Patch("vllm.v1.simple_kv_offload.manager:generate_block_hash_extra_keys",
          params=("request", "start_token_idx", "end_token_idx", "start_mm_idx"),
          wrap=_with_steering_key, why=_WHY, until=_UNTIL, optional=True),
)
