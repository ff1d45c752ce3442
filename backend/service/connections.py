"""Connections the service keeps open: how many, and how long a client may take to send a request head.

uvicorn closes a keep-alive connection that idles after a response (`timeout_keep_alive`), but one that
never completes a request head stays open for ever: a few hundred idle or half-sent sockets used up the
service's file descriptors and /v1/health stopped answering. This protocol (uvicorn's h11 one) adds

- a head timeout: a connection still without a complete request head `head_timeout_s` after it opened,
  or after its previous response, is closed (bytes dripping in do not extend it);
- a connection limit: at `max_connections`, a new connection closes the one that has waited longest for
  a request head, so idle sockets cannot crowd out a client that sends one; only when every connection
  has a request in progress is the new one answered 503 and closed.

Request bodies have their own time limit (`RequestGuard`, 408), so a busy connection is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5

_BUSY_BODY = json.dumps(
    {
        "error": {
            "code": "busy",
            "message": "the backend has too many connections open; retry in a moment",
            "field": None,
        }
    }
).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BUSY_BODY)}\r\n".encode()
    + b"retry-after: 1\r\nconnection: close\r\n\r\n"
    + _BUSY_BODY
)


class BoundedH11Protocol(H11Protocol):
    max_connections = MAX_CONNECTIONS
    head_timeout_s = HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When this connection began waiting for a request head; None while a request is in progress.
        self.waiting_since: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._rejected = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections and not self._evict_longest_waiting():
            self._rejected = True
            self.transport = transport  # connection_lost expects it
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request head arrived (or the connection ends)
            self.waiting_since = None
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self.waiting_since = time.monotonic()
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self.close_idle)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def close_idle(self) -> None:
        """Close a connection that has no request in progress."""
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _evict_longest_waiting(self) -> bool:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, BoundedH11Protocol) and c.waiting_since is not None and not c._rejected
        ]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.waiting_since or 0.0)
        self.connections.discard(victim)
        victim.close_idle()
        return True


def protocol_class(
    max_connections: int = MAX_CONNECTIONS, head_timeout_s: float = HEAD_TIMEOUT_S
) -> type[BoundedH11Protocol]:
    """The protocol with these limits, for `uvicorn.Config(http=...)`."""
    return type(
        "BoundedH11Protocol",
        (BoundedH11Protocol,),
        {"max_connections": max_connections, "head_timeout_s": head_timeout_s},
    )
