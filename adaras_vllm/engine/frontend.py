"""The one place that decides a request's steering, in the engine front end.

Every request of every entry point passes ``InputProcessor.process_inputs`` (HTTP routes,
``vllm serve``, offline ``LLM``) or, for the OpenAI server, ``AsyncLLM.add_request``
first. There its steering is parsed, bounded and resolved (default alpha, default map,
mode) and the resolved values are written into the request's own copy of
``extra_args``; the prefix-cache key and the workers read only those. A bad value fails
that request alone, exactly like vLLM's own validation: ``ValueError`` offline, HTTP 400
with ``param`` naming the field on every route.
"""

from __future__ import annotations

import copy
import functools
import logging
import uuid
from typing import Any

from vllm.exceptions import VLLMValidationError

from .params import (
    SteeringParamError,
    SteeringParams,
    is_steering_key,
    merge_request_fields,
)
from .patches import Patch
from .registry import MapRegistry, front_end_registry
from .resolved import GATE_KEY
from .request_context import HTTP_STEERING, IN_BEAM_SEARCH, HttpSteering

logger = logging.getLogger("vllm.adaras")


class InvalidSteeringRequest(VLLMValidationError, SteeringParamError):
    """vLLM's client-error type (so the request fails alone, as a 400) that is also a
    ``ValueError`` like every other steering parameter error."""

    def __init__(self, error: SteeringParamError) -> None:
        VLLMValidationError.__init__(self, str(error), parameter=error.field, value=error.value)
        self.field = error.field


def decide(
    registry: MapRegistry,
    extra_args: dict[str, Any] | None,
    http: HttpSteering | None,
    *,
    beam_search: bool | None = None,
) -> SteeringParams:
    """A request's steering from its ``extra_args`` and, over HTTP, the body's fields.

    Beam search re-submits every beam as a new one-token request whose prompt holds the
    tokens generated so far, so steering could not reach positions ``t >= P - 1`` of the
    original prompt: a request that asks for steering there is refused, and the
    operator's default is not applied. ``beam_search`` None: whether this runs inside
    vLLM's beam search (the HTTP layer passes it from the body for its early check).
    """
    fields = http.fields if http is not None else None
    try:
        if IN_BEAM_SEARCH.get() if beam_search is None else beam_search:
            # Beam search builds its own params without vllm_xargs: read them from HTTP.
            if http is not None:
                extra_args = merge_request_fields(extra_args, http.xargs_fields)
            wanted = registry.parse(extra_args, fields, use_default=False)
            if wanted.steered:
                raise SteeringParamError(
                    "steering cannot be applied with beam search (use_beam_search): each "
                    "beam step is submitted as a fresh prompt; drop steer_alpha or the beam "
                    "search",
                    field="steer_alpha",
                    value=wanted.alpha,
                )
            return SteeringParams(alpha=0.0, map_name=wanted.map_name, mode="off")
        return registry.parse(extra_args, fields)
    except SteeringParamError as e:
        raise InvalidSteeringRequest(e) from None


def _with_resolved(params: Any, decision: SteeringParams, *, key: str | None = None
                   ) -> dict[str, Any]:
    """The request's ``extra_args`` with the decision written in. A gated request also
    gets a tag its gate result is filed under: ``key`` if given (the HTTP path gives a
    fresh one: a client must not choose another request's tag), else the one already
    there (offline callers may choose), else a new one."""
    given = params.extra_args or {}
    extra = {k: v for k, v in given.items() if not is_steering_key(k) and k != GATE_KEY}
    resolved = {**extra, **decision.as_extra_args()}
    if decision.gated:
        kept = given.get(GATE_KEY)
        resolved[GATE_KEY] = key or (kept if isinstance(kept, str) else uuid.uuid4().hex)
    return resolved


def _resolve_into(params: Any, decision: SteeringParams, *, key: str | None = None) -> None:
    """Write the decision into ``params`` (the request's own copy). An adaptive request
    never reads the prefix cache: its gate must see every prompt position run."""
    params.extra_args = _with_resolved(params, decision, key=key)
    if decision.gated:
        params.skip_reading_prefix_cache = True


def _deciding_in_process_inputs(original_process):  # noqa: ANN001, ANN202
    from vllm.sampling_params import SamplingParams

    @functools.wraps(original_process)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):  # noqa: ANN001, ANN202
        registry = front_end_registry(self)
        if not registry or not isinstance(params, SamplingParams):
            return original_process(self, request_id, prompt, params, *args, **kwargs)
        # Called by add_request with params it already resolved, or directly (offline).
        decision = decide(registry, params.extra_args, None)
        request = original_process(self, request_id, prompt, params, *args, **kwargs)
        if request.sampling_params is not None:  # the request's own copy of the params
            request.sampling_params.extra_args = params.extra_args
            _resolve_into(request.sampling_params, decision)
        return request

    return process_inputs


def _deciding_in_the_callers_task(original_add):  # noqa: ANN001, ANN202
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    @functools.wraps(original_add)
    async def add_request(self, request_id, prompt, params, *args, **kwargs):  # noqa: ANN001, ANN202
        # The caller's task: the HTTP fields are visible here (not in process_inputs,
        # which may run on the renderer's thread pool), so resolve now, into a copy.
        registry = front_end_registry(self.input_processor)
        if registry and isinstance(params, SamplingParams):
            http = HTTP_STEERING.get()
            core_request = isinstance(prompt, EngineCoreRequest)
            # A ready EngineCoreRequest skips process_inputs: its own params are what runs.
            source = prompt.sampling_params if core_request else params
            try:
                decision = decide(registry, getattr(source, "extra_args", None), http)
            except InvalidSteeringRequest as e:
                if http is not None:
                    http.rejected = e.field
                raise
            key = uuid.uuid4().hex  # one tag for both copies
            if core_request and prompt.sampling_params is not None:
                _resolve_into(prompt.sampling_params, decision, key=key)
            params = copy.copy(params)  # the caller's params may be shared: never mutate
            _resolve_into(params, decision, key=key)
            if http is not None:
                http.decisions.append(decision)
                http.gate_keys.append((params.extra_args or {}).get(GATE_KEY))
        return await original_add(self, request_id, prompt, params, *args, **kwargs)

    return add_request


def _deciding_for_ready_requests(original_engine_add):  # noqa: ANN001, ANN202
    from vllm.v1.engine import EngineCoreRequest

    @functools.wraps(original_engine_add)
    def add_request(self, request_id, prompt, params, *args, **kwargs):  # noqa: ANN001, ANN202
        # Offline: a raw prompt goes through process_inputs; a ready EngineCoreRequest
        # does not, so decide for it here.
        registry = front_end_registry(self.input_processor)
        if (registry and isinstance(prompt, EngineCoreRequest)
                and prompt.sampling_params is not None):
            decision = decide(registry, prompt.sampling_params.extra_args, None)
            _resolve_into(prompt.sampling_params, decision)
        return original_engine_add(self, request_id, prompt, params, *args, **kwargs)

    return add_request


def _marking_beam_search_online(online):  # noqa: ANN001, ANN202
    @functools.wraps(online)
    async def beam_search(self, *args, **kwargs):  # noqa: ANN001, ANN202
        token = IN_BEAM_SEARCH.set(True)
        try:
            async for out in online(self, *args, **kwargs):
                yield out
        finally:
            try:
                IN_BEAM_SEARCH.reset(token)
            except ValueError:  # closed from another context: that context ends anyway
                pass

    return beam_search


def _marking_beam_search_offline(offline):  # noqa: ANN001, ANN202
    @functools.wraps(offline)
    def beam_search(self, *args, **kwargs):  # noqa: ANN001, ANN202
        token = IN_BEAM_SEARCH.set(True)
        try:
            return offline(self, *args, **kwargs)
        finally:
            IN_BEAM_SEARCH.reset(token)

    return beam_search


_DECIDE_UNTIL = "vLLM validates extra_args through a plugin hook with the request's context"
_BEAM_WHY = "beam search re-submits beams as fresh prompts steering cannot follow: mark them"
_REQUEST = ("self", "request_id", "prompt", "params")
PATCHES = (
    Patch("vllm.v1.engine.input_processor:InputProcessor.process_inputs", params=_REQUEST,
          wrap=_deciding_in_process_inputs,
          why="decide each request's steering once, offline and under vllm serve",
          until=_DECIDE_UNTIL),
    Patch("vllm.v1.engine.async_llm:AsyncLLM.add_request", params=_REQUEST,
          wrap=_deciding_in_the_callers_task,
          why="decide in the caller's task, where the HTTP fields are visible",
          until=_DECIDE_UNTIL),
    Patch("vllm.v1.engine.llm_engine:LLMEngine.add_request", params=_REQUEST,
          wrap=_deciding_for_ready_requests,
          why="decide for a ready EngineCoreRequest offline", until=_DECIDE_UNTIL),
    Patch("vllm.entrypoints.generate.beam_search.online:BeamSearchOnlineMixin.beam_search",
          params=("self",), wrap=_marking_beam_search_online, why=_BEAM_WHY,
          until="vLLM marks the requests beam search derives"),
    Patch("vllm.entrypoints.generate.beam_search.offline:BeamSearchOfflineMixin.beam_search",
          params=("self",), wrap=_marking_beam_search_offline, why=_BEAM_WHY,
          until="vLLM marks the requests beam search derives"),
)
