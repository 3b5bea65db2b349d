"""What the HTTP layer knows about a request that the engine front end cannot see.

The OpenAI routes differ in whether their body has ``vllm_xargs``; the top-level
``steer_*`` fields that ``adaras serve`` accepts must reach the front end on every route
alike. The HTTP middleware puts them here (a context variable of the request's task) and
the front end, which decides the request's steering, records its decision here for the
response's audit object and the metrics. Beam search marks its own requests, because it
re-submits the growing sequence as fresh prompts that steering cannot follow exactly.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from .params import SteeringParams


@dataclass
class HttpSteering:
    """One HTTP request's steering fields, and what the front end decided for it."""

    fields: dict[str, Any] = field(default_factory=dict)  # top-level steer_* of the body
    xargs_fields: dict[str, Any] = field(default_factory=dict)  # steer_* of vllm_xargs
    decisions: list[SteeringParams] = field(default_factory=list)
    gate_keys: list[str | None] = field(default_factory=list)  # per decision (adaptive only)
    rejected: str | None = None  # the field the front end refused, for the metrics
    disconnected: bool = False  # the client went away before the response


HTTP_STEERING: contextvars.ContextVar[HttpSteering | None] = contextvars.ContextVar(
    "adaras_http_steering", default=None
)
IN_BEAM_SEARCH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "adaras_in_beam_search", default=False
)
