"""ASGI middleware capping request bodies (BentoML has no limit of its own).

It rejects a declared `Content-Length` over the limit before reading anything, and cuts off
a streamed (chunked) body as soon as it passes the limit, both with a JSON 413.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class RequestSizeLimit:
    """Pure ASGI middleware; `max_bytes` is read through a callable so settings load once, late."""

    def __init__(self, app: Any, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await _reject(send, 400, "bad_request", "the Content-Length header is not a number")
                return
            if too_big:
                await _reject(send, 413, "too_large",
                              f"the request body is {int(declared)} bytes, over the {limit} limit")
                return
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


async def _reject(send: Send, status: int, kind: str, reason: str) -> None:
    body = json.dumps({"error": reason, "kind": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
