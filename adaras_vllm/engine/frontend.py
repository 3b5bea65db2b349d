"""Refuse bad steering parameters (and misfit maps) before anything reaches the engine.

Wrapping the input processor's own validation means the error surfaces exactly like
vLLM's (``ValueError`` from ``LLM.generate``/``AsyncLLM.generate``, HTTP 400 from the
OpenAI server) and only that request fails.
"""

from __future__ import annotations

import functools

from vllm.exceptions import VLLMValidationError

from .params import SteeringParamError
from .registry import active_registry


class InvalidSteeringRequest(VLLMValidationError, SteeringParamError):
    """vLLM's client-error type (so the request fails alone, as a 400) that is also a
    ``ValueError`` like every other steering parameter error."""

    def __init__(self, error: SteeringParamError) -> None:
        VLLMValidationError.__init__(self, str(error), parameter=error.field, value=error.value)
        self.field = error.field


def patch_input_validation() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor._validate_params
    if getattr(original, "_adaras", False):
        return
    original_init = InputProcessor.__init__

    @functools.wraps(original_init)
    def __init__(self, vllm_config, *args, **kwargs):  # noqa: ANN001, ANN202
        # Refuse maps that do not fit the served model in the front end too, so the
        # user sees the mismatch itself rather than a failed engine start.
        for m in active_registry().maps:
            m.validate(vllm_config.model_config.hf_text_config)
        original_init(self, vllm_config, *args, **kwargs)

    InputProcessor.__init__ = __init__

    @functools.wraps(original)
    def _validate_params(self, params, *args, **kwargs):  # noqa: ANN001, ANN202
        result = original(self, params, *args, **kwargs)
        registry = active_registry()
        if registry and isinstance(params, SamplingParams):
            try:
                registry.parse(params.extra_args)
            except SteeringParamError as e:
                raise InvalidSteeringRequest(e) from None
        return result

    _validate_params._adaras = True
    InputProcessor._validate_params = _validate_params
