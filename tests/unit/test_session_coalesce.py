"""Worker.Session batching with coalescing (services/worker/session.py): first tokens and ends go
at once; further tokens of a request that already streamed wait for the window and ride one
chunk; with no window every engine step is its own message."""

from __future__ import annotations

import asyncio

from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.worker.session import WorkerSession

STEP_S = 0.005


async def _steps(request, parent):
    """A request on a stand-in engine: one token per 5 ms step, then the end."""
    n = request.sampling.max_tokens
    for k in range(n):
        await asyncio.sleep(STEP_S)
        last = k == n - 1
        yield worker_pb2.WorkerChunk(token_ids=[100 + k], text=f"t{k}", finished=last,
                                     finish_reason=common_pb2.FINISH_REASON_LENGTH if last else 0)


async def _session(coalesce_s: float, max_tokens: int = 12):
    """(seconds after start, batch) for one request run through a session."""
    start = worker_pb2.SessionRequest(start=worker_pb2.WorkerGenerateRequest(
        request_id="r1", sampling=common_pb2.SamplingParams(max_tokens=max_tokens)))
    ended = asyncio.Event()

    async def requests():
        yield start
        await ended.wait()

    loop = asyncio.get_running_loop()
    t0, out = loop.time(), []
    async for batch in WorkerSession(_steps, coalesce_s).serve(requests()):
        out.append((loop.time() - t0, batch))
        if any(c.finished for c in batch.chunks):
            ended.set()
    return out


def test_without_a_window_every_step_is_a_message():
    out = asyncio.run(_session(0.0))
    assert len(out) == 12 and all(len(b.chunks) == 1 and len(b.chunks[0].token_ids) == 1 for _, b in out)


def test_a_window_merges_steps_but_not_the_first_token_or_the_end():
    out = asyncio.run(_session(0.1, max_tokens=40))
    chunks = [c for _, b in out for c in b.chunks]
    assert [t for c in chunks for t in c.token_ids] == list(range(100, 140))       # nothing lost or reordered
    assert "".join(c.text for c in chunks) == "".join(f"t{k}" for k in range(40))
    assert len(chunks[0].token_ids) == 1 and out[0][0] < 0.08                     # not held for the window
    assert 3 <= len(out) < 40 and max(len(c.token_ids) for c in chunks) > 1      # later steps share messages
    assert all(len(b.chunks) == 1 for _, b in out)                                # one chunk per request per message
    assert chunks[-1].finished and chunks[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    gaps = [b - a for (a, _), (b, _) in zip(out, out[1:])]
    assert all(g >= 0.1 - 0.005 for g in gaps[:-1])                              # at most once per window
