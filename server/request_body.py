"""Reading a request body within a size limit, and finding its ``steer_*`` fields.

The steering middleware must see the whole JSON body before vLLM does (to hand the
fields to the engine front end and refuse bad ones early), so it reads the body itself:
bounded, because a client chooses its size, then replayed downstream unchanged or with
the steering fields removed (plain vLLM would ignore or refuse them).
"""

from __future__ import annotations

import json
from typing import Any

from adaras_vllm.engine.params import is_steering_key
from adaras_vllm.engine.request_context import HttpSteering

from .asgi import Message, Receive, Scope

DEFAULT_MAX_BODY_BYTES = 32 << 20


class BodyTooLarge(Exception):
    """The body passed the limit while being read (its Content-Length said less or nothing)."""


def content_types(scope: Scope) -> list[bytes]:
    """Every Content-Type header of the request: more than one is ambiguous."""
    return [v for k, v in scope.get("headers") or [] if k.lower() == b"content-type"]


def is_json_media(types: list[bytes]) -> bool:
    """Whether the (single) Content-Type is JSON; only JSON bodies carry steering."""
    media = types[0].split(b";")[0].strip().lower() if types else b""
    return media == b"application/json" or media.endswith(b"+json")


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body; raises ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def bounded_receive(receive: Receive, limit: int) -> Receive:
    """Uploads (audio, files) we do not parse: still bounded, by ending the read early."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            return {"type": "http.disconnect"}  # stop reading; the handler gives up
        return message

    return limited


def replay_body(body: bytes, receive: Receive, http: HttpSteering | None = None) -> Receive:
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


def steering_fields(mapping: dict[str, Any]) -> dict[str, Any]:
    """The ``steer_*`` entries of ``mapping``; null means absent, as for OpenAI's own
    optional fields."""
    return {k: v for k, v in mapping.items() if is_steering_key(k) and v is not None}


def xargs_steering_fields(body: dict[str, Any], xargs: dict[str, Any] | None) -> dict[str, Any]:
    """The ``steer_*`` fields of ``vllm_xargs`` and, for the token-in/token-out routes,
    of ``sampling_params.extra_args`` (which they nest instead)."""
    fields = steering_fields(xargs) if isinstance(xargs, dict) else {}
    nested = body.get("sampling_params")
    nested_args = nested.get("extra_args") if isinstance(nested, dict) else None
    if isinstance(nested_args, dict):
        fields.update(steering_fields(nested_args))
    return fields


def without_steering(body: dict[str, Any], raw: bytes) -> bytes:
    """The body for vLLM: ``raw`` itself, or re-encoded without the top-level ``steer_*``
    fields and the null ones of ``vllm_xargs`` (the front end has them already)."""
    xargs = body.get("vllm_xargs")
    null_in_xargs = isinstance(xargs, dict) and any(is_steering_key(k) and v is None
                                                    for k, v in xargs.items())
    if not (any(is_steering_key(k) for k in body) or null_in_xargs):
        return raw
    stripped = {k: v for k, v in body.items() if not is_steering_key(k)}
    if isinstance(xargs, dict):
        stripped["vllm_xargs"] = {k: v for k, v in xargs.items()
                                  if not (is_steering_key(k) and v is None)}
    return json.dumps(stripped).encode()
