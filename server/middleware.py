"""ASGI middleware: authentication, and steering on the two generation routes.

Steering wraps vLLM's own handlers rather than replacing them, so chat templates,
streaming, logprobs, tools and ``n`` behave exactly as in vLLM. On the way in, the
``steer_*`` fields are validated (a 400 in the OpenAI error shape before anything reaches
the engine) and moved into ``vllm_xargs``; on the way out, each response, or the last
data chunk of a stream, says what was applied.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .metrics import REJECTED_REQUESTS, STEERED_REQUESTS, STEERED_TOKENS
from .steering_fields import AppliedSteering, SteeringFieldError, SteeringPolicy

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STEERED_ROUTES = ("/v1/chat/completions", "/v1/completions")
OPEN_ROUTES = ("/health",)


def openai_error(status: int, message: str, param: str | None, kind: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}
    ).encode()


async def send_json(send: Send, status: int, body: bytes, extra_headers=()) -> None:  # noqa: ANN001
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route but ``/health`` needs ``Authorization: Bearer <key>`` (else 401)."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)  # CORS preflight carries no auth
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(token, k) for k in self.keys):
            return await self.app(scope, receive, send)
        message = "missing or invalid API key: send 'Authorization: Bearer <key>'"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        await send_json(send, 401, openai_error(401, message, None, "AuthenticationError"),
                        [(b"www-authenticate", b"Bearer")])
        return None


class SteeringMiddleware:
    """Validate and resolve steering fields; annotate responses; count steered work."""

    def __init__(self, app: ASGIApp, policy: SteeringPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope["path"] not in STEERED_ROUTES):
            return await self.app(scope, receive, send)
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):  # not ours to judge: vLLM answers malformed bodies
            return await self.app(scope, _replay(raw, receive), send)
        try:
            body, applied = self.policy.resolve(body)
        except SteeringFieldError as e:
            REJECTED_REQUESTS.labels(field=e.field or "").inc()
            return await send_json(send, 400, openai_error(400, str(e), e.field, "BadRequestError"))
        await self.app(
            scope, _replay(json.dumps(body).encode(), receive), _AnnotatingSend(send, applied)
        )
        return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the (rewritten) body downstream once, then the client's own events: vLLM
    polls for a disconnect while it generates, and must see only a real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class _AnnotatingSend:
    """Adds ``"steering": {...}`` to a successful JSON response or a stream's last chunk."""

    def __init__(self, send: Send, applied: AppliedSteering) -> None:
        self.send = send
        self.applied = applied
        self.start: Message | None = None
        self.streaming = False
        self.passthrough = False
        self.body: list[bytes] = []
        self.pending = b""  # stream text not yet split into events
        self.held: bytes | None = None  # the last complete data event, not yet sent
        self.stream_tokens = 0
        self.stream_usage: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            self.passthrough = message["status"] != 200  # errors go out untouched
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

    async def _finish_json(self) -> None:
        raw = b"".join(self.body)
        try:
            data = json.loads(raw)
            data["steering"] = self.applied.as_json()
            raw = json.dumps(data).encode()
            self._count(int((data.get("usage") or {}).get("completion_tokens") or 0))
        except (ValueError, TypeError, AttributeError):
            pass
        assert self.start is not None
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": raw})

    async def _stream(self, message: Message) -> None:
        self.pending += message.get("body", b"")
        out = []
        while b"\n\n" in self.pending:
            event, self.pending = self.pending.split(b"\n\n", 1)
            event += b"\n\n"
            if event.startswith(b"data: [DONE]"):
                if self.held is not None:
                    out.append(self._annotate(self.held))
                    self.held = None
                out.append(event)
            elif event.startswith(b"data: "):
                self._observe(event)
                if self.held is not None:
                    out.append(self.held)
                self.held = event
            else:
                out.append(event)
        more = message.get("more_body", False)
        if not more:
            if self.held is not None:  # a stream that ended without [DONE]
                out.append(self._annotate(self.held))
                self.held = None
            out.append(self.pending)
            self.pending = b""
            self._count(self.stream_usage if self.stream_usage is not None else self.stream_tokens)
        await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": more})

    def _observe(self, event: bytes) -> None:
        try:
            data = json.loads(event[len(b"data: "):])
        except ValueError:
            return
        usage = data.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.stream_usage = int(usage["completion_tokens"])
        # Without usage in the stream, count one token per choice chunk (vLLM streams a
        # chunk per token at the default stream_interval); a chat stream's opening
        # role-only chunk carries no token.
        for choice in data.get("choices") or []:
            if "role" not in (choice.get("delta") or {}):
                self.stream_tokens += 1

    def _annotate(self, event: bytes) -> bytes:
        try:
            data = json.loads(event[len(b"data: "):])
            data["steering"] = self.applied.as_json()
            return b"data: " + json.dumps(data).encode() + b"\n\n"
        except (ValueError, TypeError):
            return event

    def _count(self, tokens: int) -> None:
        if self.applied.applied:
            STEERED_REQUESTS.labels(map=self.applied.map).inc()
            STEERED_TOKENS.labels(map=self.applied.map).inc(tokens)
