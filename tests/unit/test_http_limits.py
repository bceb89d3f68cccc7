"""The HTTP body limit (services/router/http_limits.py), driven as ASGI: refused bodies never reach
the app behind it (no parsing, no auth), allowed ones arrive whole."""

from __future__ import annotations

import asyncio
import json

from services.router.http_limits import BodyLimit


class _Echo:
    """The app behind the limit: answers 200 with the size of the body it read."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(app, method: str, chunks: list[bytes], content_length: str | None):
    headers = [(b"content-length", content_length.encode())] if content_length is not None else []
    scope = {"type": "http", "method": method, "headers": headers, "path": "/v1/completions"}
    pending = [{"type": "http.request", "body": c, "more_body": k < len(chunks) - 1} for k, c in enumerate(chunks)]
    sent = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:])


def test_a_declared_length_over_the_limit_is_413_without_reading_or_calling_the_app():
    inner = _Echo()
    status, body = _call(BodyLimit(inner, 100), "POST", [b"x" * 10], "101")
    assert status == 413 and inner.calls == 0
    err = json.loads(body)["error"]
    assert "101 bytes" in err["message"] and "100" in err["message"] and err["code"] == "request_too_large"
    assert _call(BodyLimit(inner, 100), "POST", [b"x"], "1e9")[0] == 413 and inner.calls == 0


def test_a_chunked_body_is_counted_as_it_arrives():
    inner = _Echo()
    assert _call(BodyLimit(inner, 100), "POST", [b"x" * 60, b"y" * 60], None)[0] == 413
    assert inner.calls == 0
    status, body = _call(BodyLimit(inner, 100), "POST", [b"x" * 40, b"y" * 40], None)
    assert (status, body, inner.calls) == (200, b"80", 1)     # handed on whole


def test_bodies_within_the_limit_and_gets_pass():
    inner = _Echo()
    assert _call(BodyLimit(inner, 100), "POST", [b"x" * 100], "100") == (200, b"100")
    assert _call(BodyLimit(inner, 100), "GET", [b""], None) == (200, b"0")
