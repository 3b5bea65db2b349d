"""The raw ASGI plumbing our middlewares share: types, the OpenAI error shape, paths.

The middlewares run outside FastAPI (before routing), so they answer errors themselves;
doing it in one place keeps every refusal in the same OpenAI ``{"error": ...}`` shape.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def openai_error(status: int, message: str, param: str | None, kind: str) -> bytes:
    """An error body as OpenAI (and vLLM) write it, so clients parse ours the same way."""
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}
    ).encode()


async def send_json(send: Send, status: int, body: bytes,
                    extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer the request from a middleware (no route, so no FastAPI response class)."""
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
