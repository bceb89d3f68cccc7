"""Bounds the HTTP front door enforces before anything else runs (no parsing, no auth).

`BodyLimit` refuses a request body over `max_bytes` with 413: by its Content-Length when it has
one (nothing is read), else by counting while it arrives (chunked: buffered up to the limit, then
handed on). A pure ASGI middleware, so FastAPI never parses what it would refuse.
"""

from __future__ import annotations

import json

_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(send, length.decode("latin-1"))
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method", "").encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, f"more than {size}")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, length: str) -> None:
        payload = json.dumps({"error": {
            "message": f"request body of {length} bytes is over this server's limit of {self.max_bytes} bytes",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
