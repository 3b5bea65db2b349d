"""Make the gate's decision exist before the first steered position runs.

An adaptive request is steered from position ``P-1`` on, if its gate fires; the gate
reads positions ``0 .. P-2``. If one forward ran ``P-1`` together with earlier prompt
positions, the steered layers would meet ``P-1`` before the gate had seen the rest. So the
scheduler never lets a chunk of an adaptive request hold ``P-1`` together with earlier
positions: such a chunk ends at ``P-2``, and ``P-1`` runs in the next step, on its own or
beside other requests. That costs an adaptive request one extra step before its first
token, and nothing to the others.

vLLM 0.32 passes every request's chunk size (waiting and running) through
``Scheduler._reserve_prefill_lookahead``; the trim is applied after its own rule.

The gate must also see every prompt position run, so an adaptive request never reads
the prefix cache. The front end asks for that in its ``SamplingParams``; the scheduler
makes sure of it when the request arrives, so the score is right even if a front end
did not (one whose process loaded vLLM's plugins in some way this package did not see).
"""

from __future__ import annotations

import functools
from typing import Any

from .patches import Patch
from .registry import active_registry
from .resolved import resolved_of


def is_gated(request: Any) -> bool:
    """Whether the front end resolved this request to ``adaptive`` with an alpha."""
    registry = active_registry()
    return bool(registry) and resolved_of(request, registry.names, registry.gated_names).gated


def trimmed_chunk(num_prompt_tokens: int, num_computed: int, num_new: int) -> int:
    """The chunk size that keeps position ``P-1`` out of a chunk with earlier positions."""
    last = num_prompt_tokens - 1
    if num_computed < last < num_computed + num_new:
        return last - num_computed
    return num_new


def keep_gated_off_the_prefix_cache(request: Any) -> None:
    """An adaptive request computes every prompt position, whatever its front end asked."""
    if is_gated(request):
        request.skip_reading_prefix_cache = True


def _keeping_gated_off_the_cache(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def add_request(self, request):  # noqa: ANN001, ANN202
        keep_gated_off_the_prefix_cache(request)
        return original(self, request)

    return add_request


def _trimming_gated_chunks(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):  # noqa: ANN001, ANN202
        num_new = original(self, request, num_computed_tokens, num_new_tokens)
        if num_new > 1 and is_gated(request):
            return trimmed_chunk(int(request.num_prompt_tokens), int(num_computed_tokens),
                                 num_new)
        return num_new

    return _reserve_prefill_lookahead


PATCHES = (
    Patch("vllm.v1.core.sched.scheduler:Scheduler.add_request", params=("self", "request"),
          wrap=_keeping_gated_off_the_cache,
          why="adaptive requests never read the prefix cache",
          until="the scheduler honours skip_reading_prefix_cache from any front end"),
    Patch("vllm.v1.core.sched.scheduler:Scheduler._reserve_prefill_lookahead",
          params=("self", "request", "num_computed_tokens", "num_new_tokens"),
          wrap=_trimming_gated_chunks,
          why="an adaptive request's position P-1 runs after its gate saw 0..P-2",
          until="vLLM lets a plugin bound where a prefill chunk ends"),
)
