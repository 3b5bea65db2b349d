"""Client input that crashes vLLM 0.32's own code, answered as the client error it is.

Schema fuzzing (``make reliability``) found ``/v1/responses`` inputs that vLLM accepts by
schema but then fails to render with an ``AssertionError``, ``IndexError`` or
``AttributeError`` (a 500 with an empty message): e.g. a ``function_call_output`` whose
output is an ``input_file`` without data, an assistant ``message`` with empty content, an
assistant ``refusal`` part. Rendering happens before anything reaches the engine, so a
failure there is about the request's ``input``: we turn it into a 400 naming ``input``.
"""

from __future__ import annotations

import functools

from vllm.exceptions import VLLMValidationError

from adaras_vllm.engine.patches import Patch, apply

_RENDER_CRASHES = (AssertionError, IndexError, AttributeError, KeyError, TypeError)


def _answering_render_crashes_as_400(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    async def render_responses(self, request, *args, **kwargs):  # noqa: ANN001, ANN202
        try:
            return await original(self, request, *args, **kwargs)
        except _RENDER_CRASHES as e:
            raise VLLMValidationError(
                f"the request's input could not be rendered into a prompt "
                f"({type(e).__name__}: {str(e)[:200] or 'no detail'}); check its items",
                parameter="input",
            ) from e

    return render_responses


PATCHES = (
    Patch("vllm.renderers.online_renderer:OnlineRenderer.render_responses",
          params=("self", "request"), wrap=_answering_render_crashes_as_400,
          why="/v1/responses inputs that crash vLLM's renderer are a 400, not a 500",
          until="vLLM validates those inputs itself"),
)


def guard_responses_rendering() -> None:
    """Install the guard (once per process)."""
    apply(PATCHES)
