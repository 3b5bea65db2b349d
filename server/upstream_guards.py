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

_RENDER_CRASHES = (AssertionError, IndexError, AttributeError, KeyError, TypeError)


def guard_responses_rendering() -> None:
    from vllm.renderers.online_renderer import OnlineRenderer

    original = OnlineRenderer.render_responses
    if getattr(original, "_adaras", False):
        return

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

    render_responses._adaras = True
    OnlineRenderer.render_responses = render_responses
