"""Annotating each steered response with what was applied, and counting steered work.

The engine front end records its decision on the request's ``HttpSteering``; clients
must be able to see it (an audit object, not a log line) and operators to count it, so
the response is rewritten on its way out: a JSON body gains ``"steering"``, and a stream
gains it on its last event, without holding back any event.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from adaras_vllm.engine.gate_runtime import RESULTS_METHOD as GATE_RESULTS_METHOD
from adaras_vllm.engine.params import SteeringParams
from adaras_vllm.engine.request_context import HttpSteering

from .asgi import Message, Send, openai_error, send_json
from .engine_calls import merged_from_every_worker
from .metrics import (
    GATE_DECISIONS,
    REJECTED_REQUESTS,
    STEERED_REQUESTS,
    STEERED_TOKENS,
    metric_field,
)
from .steering_fields import applied_json

logger = logging.getLogger("adaras.server")

#: Streams that end with an event naming itself final (no ``[DONE]``): responses, messages.
FINAL_EVENT_TYPES = ("response.completed", "response.incomplete", "response.failed",
                     "message_stop")


def _event_data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one server-sent event (``event:`` lines may precede it)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: "):
            return line[len(b"data: "):].strip()
    return None


class AuditingSend:
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
    def decision(self) -> SteeringParams | None:
        """The front end's decision (the first, for a request of several prompts)."""
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
                results = await merged_from_every_worker(client, GATE_RESULTS_METHOD,
                                                         args=(keys,))
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
