"""The router's TokenStream (services/router/sessions.py) and the one merge rule
(services/common/chunks.py): a consumer that fell behind gets every chunk already here in one,
nothing lost or reordered, the end and the P/D hand-off carried; one that keeps up gets each
chunk as it came."""

from __future__ import annotations

import asyncio

import pytest

from services.common import chunks
from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.router.sessions import StreamFailed, TokenStream


def _chunk(k: int, **kw) -> worker_pb2.WorkerChunk:
    return worker_pb2.WorkerChunk(request_id="r1", token_ids=[100 + k], text=f"t{k}", **kw)


def test_a_consumer_that_keeps_up_gets_each_chunk_alone():
    async def run():
        stream, got = TokenStream("r1", 0.0), []
        for k in range(3):
            stream.push(_chunk(k), 0.0)
            got.append(await stream.next())
        return stream, got
    stream, got = asyncio.run(run())
    assert [list(c.token_ids) for c in got] == [[100], [101], [102]] and stream.merged == 0


def test_a_consumer_behind_gets_what_is_here_in_one_chunk_with_the_end():
    async def run():
        stream = TokenStream("r1", 0.0)
        stream.push(_chunk(0), 0.0)
        first = await stream.next()
        for k in range(1, 5):
            stream.push(_chunk(k, finished=k == 4,
                               finish_reason=common_pb2.FINISH_REASON_LENGTH if k == 4 else 0), 0.0)
        return stream, first, await stream.next()
    stream, first, rest = asyncio.run(run())
    assert list(first.token_ids) == [100]
    assert list(rest.token_ids) == [101, 102, 103, 104] and rest.text == "t1t2t3t4"
    assert rest.finished and rest.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert stream.merged == 3 and stream.tokens == 5


def test_an_error_after_the_chunks_still_comes_after_them():
    async def run():
        stream = TokenStream("r1", 0.0)
        stream.push(_chunk(0), 0.0)
        stream.push(_chunk(1), 0.0)
        stream.fail("UNAVAILABLE: worker gone")
        got = await stream.next()
        with pytest.raises(StreamFailed):
            await stream.next()
        return got
    assert list(asyncio.run(run()).token_ids) == [100, 101]


def test_merge_carries_the_prefill_legs_hand_off_and_refuses_errors_and_ends():
    held = _chunk(0)
    last = _chunk(1, finished=True, finish_reason=common_pb2.FINISH_REASON_LENGTH, prompt_tokens=7,
                  kv_transfer=worker_pb2.KvTransferParams(transfer_id="x1", num_blocks=3))
    assert chunks.can_merge(held, last)
    chunks.merge_into(held, last)
    assert held.finished and held.prompt_tokens == 7 and held.kv_transfer.transfer_id == "x1"
    assert not chunks.can_merge(held, _chunk(2))                                  # nothing after the end
    assert not chunks.can_merge(_chunk(0), _chunk(1, error_code=14))               # an error stays its own
    other = worker_pb2.WorkerChunk(request_id="r2", token_ids=[1])
    assert not chunks.can_merge(_chunk(0), other)                                  # another request's
