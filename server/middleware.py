"""ASGI middleware: authentication, request-size limits, and steering on every route.

Steering is *decided* in the engine front end (``adaras_vllm.engine.frontend``) for every
request that reaches the engine, whatever the route. This layer only adds what HTTP
needs: the body's top-level ``steer_*`` fields are handed to the front end (through a
context variable, so routes whose schema has no ``vllm_xargs`` get them too), bad values
are refused early with a 400 in the OpenAI error shape, each response (or the last data
chunk of a stream) says what the front end applied, and steered work is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from adaras_vllm.engine.frontend import decide
from adaras_vllm.engine.gate import RESULTS_METHOD as GATE_RESULTS_METHOD
from adaras_vllm.engine.params import KNOWN_KEYS, SteeringParamError, is_steering_key
from adaras_vllm.engine.registry import MapRegistry
from adaras_vllm.engine.request_context import HTTP_STEERING, HttpSteering

from .metrics import GATE_DECISIONS, REJECTED_REQUESTS, STEERED_REQUESTS, STEERED_TOKENS
from .steering_fields import applied_json

logger = logging.getLogger("adaras.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = ("/health",)
#: Streams that end with an event naming itself final (no ``[DONE]``): responses, messages.
FINAL_EVENT_TYPES = ("response.completed", "response.incomplete", "response.failed",
                     "message_stop")
DEFAULT_MAX_BODY_BYTES = 32 << 20


def openai_error(status: int, message: str, param: str | None, kind: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}
    ).encode()


async def send_json(send: Send, status: int, body: bytes, extra_headers=()) -> None:  # noqa: ANN001
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def routed_path(scope: Scope) -> str:
    """The path the router matches: without the ``--root-path`` prefix, if present."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def metric_field(field: str | None) -> str:
    """A bounded label for the rejected-requests counter: clients choose key names."""
    if field in KNOWN_KEYS or field in ("vllm_xargs", "body"):
        return str(field)
    return "unknown_steer_field" if is_steering_key(field) else "other"


class ApiKeyMiddleware:
    """Every route but ``/health`` needs ``Authorization: Bearer <key>`` (else 401).

    Keys are compared as SHA-256 digests (constant time, and the length of a key does not
    show). Only a genuine CORS preflight (``Origin`` and ``Access-Control-Request-Method``)
    passes without a key: vLLM's CORS middleware answers it without reaching any route.
    """

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.digests = [hashlib.sha256(k.encode()).digest() for k in api_keys]

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        matches = [hmac.compare_digest(digest, d) for d in self.digests]  # no short cut
        return scheme.lower() == b"bearer" and any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or routed_path(scope) in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        preflight = (scope.get("method") == "OPTIONS" and b"origin" in headers
                     and b"access-control-request-method" in headers)
        if preflight or self._authorized(headers):
            return await self.app(scope, receive, send)
        message = "missing or invalid API key: send 'Authorization: Bearer <key>'"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        await send_json(send, 401, openai_error(401, message, None, "AuthenticationError"),
                        [(b"www-authenticate", b"Bearer")])
        return None


class _BodyTooLarge(Exception):
    pass


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
        types = [v for k, v in scope.get("headers") or [] if k.lower() == b"content-type"]
        if len(types) > 1:  # parsers disagree on which one counts: refuse the ambiguity
            return await self._reject(send, "send one Content-Type header, got "
                                      f"{len(types)}", "body")
        media = types[0].split(b";")[0].strip().lower() if types else b""
        if media != b"application/json" and not media.endswith(b"+json"):
            # Uploads (audio, files): not ours to parse, but still bounded.
            return await self.app(scope, self._limited(receive), send)
        try:
            raw = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            return await self._too_large(send)
        try:
            body = json.loads(raw)
        except RecursionError:
            return await self._reject(send, "the request body nests JSON too deeply", "body")
        except ValueError as e:  # answered in the OpenAI error shape, as every other 400
            return await self._reject(send, f"the request body is not valid JSON ({e})",
                                      "body", count=False)
        if not isinstance(body, dict):
            return await self.app(scope, _replay(raw, receive), send)

        # null means absent, as for OpenAI's own optional fields
        fields = {k: v for k, v in body.items() if is_steering_key(k) and v is not None}
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            return await self._reject(
                send, f"vllm_xargs must be an object, got {type(xargs).__name__}", "vllm_xargs")
        xargs_fields = ({k: v for k, v in xargs.items() if is_steering_key(k) and v is not None}
                        if isinstance(xargs, dict) else {})
        nested = body.get("sampling_params")  # token-in/token-out routes nest extra_args
        nested_args = nested.get("extra_args") if isinstance(nested, dict) else None
        if isinstance(nested_args, dict):
            xargs_fields.update({k: v for k, v in nested_args.items()
                                 if is_steering_key(k) and v is not None})
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
        if any(is_steering_key(k) for k in body) or _has_null_steering(xargs):
            # plain vLLM would ignore (or refuse) them; the front end has them from `http`
            body = {k: v for k, v in body.items() if not is_steering_key(k)}
            if isinstance(xargs, dict):
                body["vllm_xargs"] = {k: v for k, v in xargs.items()
                                      if not (is_steering_key(k) and v is None)}
            raw = json.dumps(body).encode()
        token = HTTP_STEERING.set(http)
        try:
            await self.app(scope, _replay(raw, receive, http),
                           _AnnotatingSend(send, http, routed_path(scope), scope.get("app")))
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

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}  # stop reading; the handler gives up
            return message

        return limited


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _event_data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one server-sent event (``event:`` lines may precede it)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: "):
            return line[len(b"data: "):].strip()
    return None


def _has_null_steering(xargs: Any) -> bool:
    return isinstance(xargs, dict) and any(is_steering_key(k) and v is None
                                           for k, v in xargs.items())


def _replay(body: bytes, receive: Receive, http: HttpSteering | None = None) -> Receive:
    """Hand the (rewritten) body downstream once, then the client's own events: vLLM
    polls for a disconnect while it generates, and must see only a real one (noted on
    ``http``: a request the client abandoned is neither refused nor counted)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message = await receive()
        if message.get("type") == "http.disconnect" and http is not None:
            http.disconnected = True
        return message

    return replayed


class _AnnotatingSend:
    """Adds ``"steering": {...}`` (what the front end decided) to a successful JSON
    response or a stream's last data chunk, and counts steered requests and tokens.

    A request that asked for steering on a route that never reached the engine's
    generation (so nothing decided it) gets a 400 instead of a silently unsteered 200.
    """

    def __init__(self, send: Send, http: HttpSteering, path: str, app: Any = None) -> None:
        self.send = send
        self.http = http
        self.path = path
        self.app = app
        self.gate: list[dict[str, Any] | None] | None = None
        self.start: Message | None = None
        self.streaming = False
        self.passthrough = False
        self.body: list[bytes] = []
        self.pending = b""  # stream text not yet split into events
        self.last_chunk: dict[str, Any] | None = None  # the last data chunk seen
        self.stream_tokens = 0
        self.stream_usage: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            self.passthrough = message["status"] != 200  # errors go out untouched
            if self.passthrough:
                self._count_rejection()
            if self.passthrough or self.streaming:
                return await self.send(message)
            self.start = message  # held until the body is complete: its length changes
            return None
        if message["type"] != "http.response.body" or self.passthrough:
            return await self.send(message)
        if self.streaming:
            return await self._stream(message)
        self.body.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        return await self._finish_json()

    @property
    def decision(self):  # noqa: ANN201
        return self.http.decisions[0] if self.http.decisions else None

    async def _fetch_gate(self) -> None:
        """Adaptive requests: the gate's decisions, from the engine workers (once)."""
        decision = self.decision
        if self.gate is not None or decision is None or not decision.gated:
            return
        keys = [k for k in self.http.gate_keys if k]
        results: dict[str, Any] = {}
        client = getattr(getattr(self.app, "state", None), "engine_client", None)
        if client is not None and keys:
            try:
                ranks = await client.collective_rpc(GATE_RESULTS_METHOD, args=(keys,))
                results = ranks[0] if ranks else {}
            except Exception:  # noqa: BLE001 - the answer itself must still go out
                logger.exception("adaras: could not read gate results for %s", keys)
        self.gate = [results.get(k) for k in keys]
        for g in self.gate:
            GATE_DECISIONS.labels(
                map=decision.map_name,
                decision="steered" if g and g["fired"] else "not_steered").inc()

    def _audit(self) -> dict[str, Any]:
        return applied_json(self.decision, self.gate)

    def _count_rejection(self) -> None:
        if self.http.rejected is not None:
            REJECTED_REQUESTS.labels(field=metric_field(self.http.rejected)).inc()

    async def _finish_json(self) -> None:
        raw = b"".join(self.body)
        if (self.decision is None and (self.http.fields or self.http.xargs_fields)
                and not self.http.disconnected):
            REJECTED_REQUESTS.labels(field=metric_field(next(iter(
                self.http.fields or self.http.xargs_fields)))).inc()
            message = (f"{self.path} does not apply steering; send steer_* fields only to "
                       "routes that generate text (chat, completions, responses, messages)")
            key = next(iter(self.http.fields or self.http.xargs_fields))
            return await send_json(send=self.send, status=400,
                                   body=openai_error(400, message, key, "BadRequestError"))
        if self.decision is not None:
            await self._fetch_gate()
            try:
                data = json.loads(raw)
                if isinstance(data, dict):
                    data["steering"] = self._audit()
                    raw = json.dumps(data).encode()
                    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
                    self._count(int(usage.get("completion_tokens")
                                    or usage.get("output_tokens") or 0))
            except (ValueError, TypeError):
                pass
        assert self.start is not None
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": raw})

    async def _stream(self, message: Message) -> None:
        """Pass events on at once (no added latency). The audit goes on the stream's last
        event: a final event that names itself (``response.completed``, ``message_stop``)
        is annotated; a stream closed by ``[DONE]`` gets one more chunk before it, with no
        choices and the ``steering`` object, like the usage chunk vLLM may send."""
        self.pending += message.get("body", b"")
        out = []
        while b"\n\n" in self.pending:
            event, self.pending = self.pending.split(b"\n\n", 1)
            event += b"\n\n"
            data = _event_data(event)
            if data == b"[DONE]":
                if self.decision is not None and self.last_chunk is not None:
                    await self._fetch_gate()
                    out.append(self._steering_chunk())
                out.append(event)
            elif data is not None:
                parsed = self._observe(data)
                if isinstance(parsed, dict) and parsed.get("type") in FINAL_EVENT_TYPES:
                    await self._fetch_gate()
                    event = self._annotate(event)
                elif isinstance(parsed, dict):
                    self.last_chunk = parsed
                out.append(event)
            else:
                out.append(event)
        more = message.get("more_body", False)
        if not more:
            out.append(self.pending)
            self.pending = b""
            if self.decision is not None:
                self._count(self.stream_usage if self.stream_usage is not None
                            else self.stream_tokens)
        await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": more})

    def _steering_chunk(self) -> bytes:
        last = self.last_chunk or {}
        chunk = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
        chunk.update({"choices": [], "steering": self._audit()})
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _observe(self, payload: bytes) -> Any:
        try:
            data = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return data
        response = data.get("response")  # /v1/responses streams its usage at the end
        usage = data.get("usage") or (response.get("usage") if isinstance(response, dict)
                                      else None)
        if isinstance(usage, dict):
            count = usage.get("completion_tokens", usage.get("output_tokens"))
            if isinstance(count, int):
                self.stream_usage = count
        # Without usage in the stream, count one token per choice chunk (vLLM streams a
        # chunk per token at the default stream_interval); a chat stream's opening
        # role-only chunk carries no token.
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and "role" not in (choice.get("delta") or {}):
                self.stream_tokens += 1
        return data

    def _annotate(self, event: bytes) -> bytes:
        """The event with ``steering`` added to its JSON data (other lines kept)."""
        if self.decision is None:
            return event
        lines = event.rstrip(b"\n").split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data: "):
                try:
                    data = json.loads(line[len(b"data: "):])
                except ValueError:
                    return event
                if not isinstance(data, dict):
                    return event
                data["steering"] = self._audit()
                lines[i] = b"data: " + json.dumps(data).encode()
                return b"\n".join(lines) + b"\n\n"
        return event

    def _count(self, tokens: int) -> None:
        decision = self.decision
        applied = decision is not None and (self._audit()["applied"] if decision.gated
                                            else decision.steered)
        if decision is not None and applied:
            STEERED_REQUESTS.labels(map=decision.map_name).inc()
            STEERED_TOKENS.labels(map=decision.map_name).inc(tokens)
