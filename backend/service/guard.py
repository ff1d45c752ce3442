"""What every request passes before it reaches a route: who may call, from where, and how much it may send.

- Token: `Authorization: Bearer <token>`, compared in constant time (hmac.compare_digest).
- Host and Origin: a service on loopback answers only requests addressed to a loopback name (a web page
  cannot reach it through DNS rebinding), and no request that a browser marks as coming from another
  origin (a web page cannot queue or cancel jobs by a cross-site POST). There is no CORS on purpose.
- Body size and time: bodies over `max_body_bytes` are refused with 413 before any parsing, and a body not
  complete within `body_timeout_s` with 408 (a client that sends half a body holds no connection for ever).

A pure ASGI middleware, so the answers are the API's JSON errors and the checks run before the body
is read (an unauthenticated client learns nothing, not even whether its JSON was valid).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
BODY_TIMEOUT_S = 30.0
# RFC 6750's b64token, widened to printable ASCII: HTTP clients disagree on how to encode anything else in a
# header (curl sends UTF-8, Python's http.client Latin-1 or an error), so such a token would work for some.
TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a bearer token (words to follow "the token"), or None when it can."""
    if not token:
        return "is empty"
    bad = sorted({c for c in token if c not in TOKEN_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:3])
        return f"may only hold printable ASCII characters without spaces (it has {shown})"
    return None


async def send_error(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _host_name(host: str) -> str:
    """'localhost:8765' -> 'localhost', '[::1]:8765' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        token: str | None = None,
        allowed_hosts: Iterable[str] | None = None,
        max_body_bytes: int = 64 * 1024,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.token = token.encode("ascii") if token else None
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            await send_error(
                send, 403, "forbidden", "this backend only answers requests addressed to localhost/127.0.0.1"
            )
            return
        origin = headers.get("origin")
        if origin is not None and (urlsplit(origin).netloc.lower() != host.lower() or not host):
            await send_error(send, 403, "forbidden", "cross-origin requests from web pages are not allowed")
            return
        if self.token is not None and not self._authorized(headers.get("authorization", "")):
            await send_error(
                send,
                401,
                "unauthorized",
                "this backend needs its token: send the header 'Authorization: Bearer <token>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope["method"] in BODY_METHODS:
            with anyio.move_on_after(self.body_timeout_s) as timer:
                body = await self._read_body(headers, receive)
            if timer.cancelled_caught:
                await send_error(
                    send,
                    408,
                    "timeout",
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    [(b"connection", b"close")],
                )
                return
            if body is None:
                await send_error(
                    send, 413, "too_large", f"the request body is larger than {self.max_body_bytes} bytes"
                )
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        assert self.token is not None
        return hmac.compare_digest(given.strip().encode("latin-1"), self.token)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed the limit."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away; let the app see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
