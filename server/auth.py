"""API-key authentication for every route but ``/health``.

vLLM's own ``--api-key`` guards only ``/v1``; ``adaras serve`` turns that off and puts
this middleware outermost instead, so no route (metrics, steering maps, docs) is open.
"""

from __future__ import annotations

import hashlib
import hmac

from .asgi import ASGIApp, Receive, Scope, Send, openai_error, routed_path, send_json

OPEN_ROUTES = ("/health",)


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
