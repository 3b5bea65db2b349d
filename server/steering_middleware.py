"""ASGI middleware that carries steering on every route.

Steering is *decided* in the engine front end (``adaras_vllm.engine.frontend``) for every
request that reaches the engine, whatever the route. This layer only adds what HTTP
needs: the body's top-level ``steer_*`` fields are handed to the front end (through a
context variable, so routes whose schema has no ``vllm_xargs`` get them too), bad values
are refused early with a 400 in the OpenAI error shape, and the response is passed
through ``AuditingSend`` (``response_audit``), which says what was applied and counts it.
"""

from __future__ import annotations

import json

from adaras_vllm.engine.frontend import decide
from adaras_vllm.engine.params import SteeringParamError
from adaras_vllm.engine.registry import MapRegistry
from adaras_vllm.engine.request_context import HTTP_STEERING, HttpSteering

from .asgi import ASGIApp, Receive, Scope, Send, openai_error, routed_path, send_json
from .metrics import REJECTED_REQUESTS, metric_field
from .request_body import (
    DEFAULT_MAX_BODY_BYTES,
    BodyTooLarge,
    bounded_receive,
    content_types,
    is_json_media,
    read_body,
    replay_body,
    steering_fields,
    without_steering,
    xargs_steering_fields,
)
from .response_audit import AuditingSend


class SteeringMiddleware:
    """Bound request bodies; hand ``steer_*`` fields to the front end; annotate; count."""

    def __init__(self, app: ASGIApp, registry: MapRegistry,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.registry = registry
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(send)
        types = content_types(scope)
        if len(types) > 1:  # parsers disagree on which one counts: refuse the ambiguity
            return await self._reject(send, "send one Content-Type header, got "
                                      f"{len(types)}", "body")
        if not is_json_media(types):
            # Uploads (audio, files): not ours to parse, but still bounded.
            return await self.app(scope, bounded_receive(receive, self.max_body_bytes), send)
        try:
            raw = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            return await self._too_large(send)
        try:
            body = json.loads(raw)
        except RecursionError:
            return await self._reject(send, "the request body nests JSON too deeply", "body")
        except ValueError as e:  # answered in the OpenAI error shape, as every other 400
            return await self._reject(send, f"the request body is not valid JSON ({e})",
                                      "body", count=False)
        if not isinstance(body, dict):
            return await self.app(scope, replay_body(raw, receive), send)

        fields = steering_fields(body)
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            return await self._reject(
                send, f"vllm_xargs must be an object, got {type(xargs).__name__}", "vllm_xargs")
        xargs_fields = xargs_steering_fields(body, xargs)
        http = HttpSteering(fields=fields, xargs_fields=xargs_fields)
        if fields or xargs_fields:  # early 400 from the same decision the front end makes
            if body.get("background") is True:
                return await self._reject(
                    send, "steering cannot be audited for a background response; send "
                    "steer_* fields without background", next(iter(fields or xargs_fields)))
            try:
                decide(self.registry, xargs_fields, http,
                       beam_search=bool(body.get("use_beam_search")))
            except SteeringParamError as e:
                return await self._reject(send, str(e), e.field)
        # plain vLLM would ignore (or refuse) them; the front end has them from `http`
        raw = without_steering(body, raw)
        token = HTTP_STEERING.set(http)
        try:
            await self.app(scope, replay_body(raw, receive, http),
                           AuditingSend(send, http, routed_path(scope), scope.get("app")))
        finally:
            HTTP_STEERING.reset(token)
        return None

    async def _reject(self, send: Send, message: str, field: str | None,
                      count: bool = True) -> None:
        if count:
            REJECTED_REQUESTS.labels(field=metric_field(field)).inc()
        await send_json(send, 400, openai_error(400, message, field, "BadRequestError"))

    async def _too_large(self, send: Send) -> None:
        REJECTED_REQUESTS.labels(field="body").inc()
        message = (f"request body exceeds {self.max_body_bytes} bytes "
                   "(adaras serve --max-request-body-bytes)")
        await send_json(send, 413, openai_error(413, message, None, "RequestTooLargeError"))
