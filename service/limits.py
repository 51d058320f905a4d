"""ASGI middleware capping request bodies (BentoML has no limit of its own): each one's size,
and the bytes of all the bodies one worker holds at once.

A declared `Content-Length` over the limit is refused before the app sees the request; one
within it passes straight through (the server reads exactly that many bytes), which keeps
this layer at a few microseconds on `/classify`; a streamed (chunked) body is counted and
cut off as soon as it passes the limit. Both get a JSON 413 —
after reading and dropping the rest of the body (up to `DRAIN_BYTES`), because a server
that closes a connection with unread data makes the client's kernel reset it, and clients
such as Python's `urllib` then report a reset instead of the 413. A client that sent
`Expect: 100-continue` has not sent its body yet and is answered at once.

Each request with a body reserves its `Content-Length` (a chunked one: the size limit) from
the worker's budget until its answer is sent; one that does not fit is drained and answered
503 with `Retry-After`, so N clients sending large bodies at once cost the budget, not N
bodies (a worker holds a body, its multipart copy and the decoded image while it works). The
first request always fits, so a budget under the size limit never refuses everything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
DRAIN_BYTES = 64 * 1024 * 1024  # beyond this a sender is not worth waiting for: just close
RETRY_AFTER_S = 1


class RequestSizeLimit:
    """Pure ASGI middleware; the limits are read through callables so settings load once, late.

    `budget`: body bytes in flight at once (None: no budget). One event loop per worker
    process, so the count needs no lock.
    """

    def __init__(self, app: Any, max_bytes: Callable[[], int],
                 budget: Callable[[], int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        waits = headers.get(b"expect", b"").lower() == b"100-continue"
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await _reject(send, 400, "bad_request", "the Content-Length header is not a number")
                return
            if too_big:
                if not waits:
                    await _drain(receive, DRAIN_BYTES)
                await _reject(send, 413, "too_large",
                              f"the request body is {int(declared)} bytes, over the {limit} limit")
                return
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        reserve = limit if chunked else int(declared or 0)
        if reserve and self.budget is not None:
            budget = self.budget()
            if self.in_flight and self.in_flight + reserve > budget:
                if not waits:
                    await _drain(receive, DRAIN_BYTES)
                await _reject(send, 503, "overloaded",
                              f"this worker holds {self.in_flight} bytes of request bodies (its"
                              f" budget is {budget}); retry shortly",
                              [(b"retry-after", str(RETRY_AFTER_S).encode())])
                return
        self.in_flight += reserve
        try:
            if declared is not None and not chunked:  # framed by Content-Length: nothing to count
                await self.app(scope, receive, send)
            else:
                await self._streamed(scope, receive, send, limit)
        finally:
            self.in_flight -= reserve

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen = 0
        rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # answer now; the app sees a client that went away
                    rejected = True
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    await _reject(send, 413, "too_large",
                                  f"the request body is over the {limit} byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most `budget` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _reject(send: Send, status: int, kind: str, reason: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": reason, "kind": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
