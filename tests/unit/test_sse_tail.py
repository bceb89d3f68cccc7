"""A streamed response ends in one write: the finish event, the usage event, [DONE] and the end
of the chunked body leave together (issue 9, thirteenth session: each write is a socket send,
the router's largest cost per token; the bytes the client reads are the same)."""

from __future__ import annotations

import asyncio

from services.common.errors import Unavailable
from services.common.pb.hfx.v1 import router_pb2
from services.router.http import SseResponse, _events
from services.router.oai.responses import SSE_DONE, Shaper
from services.router.stall import StallWatch
from tests.unit.test_http_api import ScriptedRelay, delta, final, play


def _respond(relay: ScriptedRelay, include_usage: bool = True) -> list[dict]:
    sent: list[dict] = []

    async def run() -> None:
        async def receive():
            await asyncio.Event().wait()   # the client never leaves

        async def send(message) -> None:
            sent.append(message)

        events = _events(relay, Shaper(False, "cmpl-1", "m", 0, False), include_usage)
        await SseResponse(events, relay, {}, StallWatch(30.0))({"type": "http"}, receive, send)

    asyncio.run(run())
    return sent


def test_the_finish_usage_and_done_events_are_one_write_that_ends_the_body():
    sent = _respond(ScriptedRelay([delta("a", 5), delta(" b", 6), router_pb2.GenerateResponse(final=final())]))
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 3
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]
    finish, usage, done, rest = sent[-1]["body"].split(b"\n\n")
    assert b'"finish_reason"' in finish and b'"usage"' in usage and done + b"\n\n" == SSE_DONE and rest == b""


def test_the_client_reads_the_same_five_events():
    relay = ScriptedRelay([delta("a", 5), delta(" b", 6), router_pb2.GenerateResponse(final=final())])
    events = play(relay, include_usage=True)
    assert len(events) == 3   # three writes: two deltas, then the tail
    read = [e + b"\n\n" for e in b"".join(events).split(b"\n\n")[:-1]]
    assert read[:2] == events[:2] and len(read) == 5 and read[-1] == SSE_DONE and b'"usage"' in read[-2]


def test_a_failed_stream_still_ends_its_body_after_the_error_event():
    sent = _respond(ScriptedRelay([delta("a", 5)], Unavailable("instance w0 failed after 1 token")))
    assert [m.get("more_body") for m in sent[1:]] == [True, True, False]
    assert sent[2]["body"].startswith(b'data: {"error":') and sent[3]["body"] == b""
