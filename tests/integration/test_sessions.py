"""Worker.Session over real gRPC on loopback, with a worker service on the simulated engine: one
stream carries many requests, each engine step's tokens travel in one batch, aborts and failures
reach exactly the requests they concern."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common import grpcutil
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.router.sessions import Sessions, StreamFailed
from services.worker.engine import make_engine
from services.worker.engine.sim_engine import SimEngineConfig
from services.worker.server import WorkerServicer


async def start_worker():
    engine = make_engine("sim", SimEngineConfig(str(ensure_default_model()), "cpu-tiny"))
    await engine.start()
    servicer = WorkerServicer(engine, common_pb2.Instance(instance_id="w0", max_model_len=engine.max_model_len))
    server, _ = grpcutil.make_server([(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)], ["hfx.v1.Worker"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


def request(rid: str, max_tokens: int, prompt=tuple(range(10, 30))) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id=rid, prompt_token_ids=list(prompt),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def drain(stream) -> tuple[int, worker_pb2.WorkerChunk]:
    tokens, last = 0, None
    while (chunk := await stream.next()) is not None:
        tokens += len(chunk.token_ids)
        last = chunk
        if chunk.finished:
            return tokens, last
    return tokens, last


def test_one_session_carries_many_requests_in_batches_of_engine_steps():
    async def main():
        server, _, address = await start_worker()
        try:
            async with grpcutil.aio_channel(address) as channel:
                outbox: asyncio.Queue = asyncio.Queue()

                async def requests():
                    while (msg := await outbox.get()) is not None:
                        yield msg

                call = worker_pb2_grpc.WorkerStub(channel).Session(requests())
                for i in range(6):
                    outbox.put_nowait(worker_pb2.SessionRequest(start=request(f"r{i}", 16)))
                tokens: dict[str, int] = {}
                finished: set[str] = set()
                batches = multi = 0
                async for batch in call:
                    batches += 1
                    multi += len({c.request_id for c in batch.chunks}) > 1
                    for chunk in batch.chunks:
                        tokens[chunk.request_id] = tokens.get(chunk.request_id, 0) + len(chunk.token_ids)
                        if chunk.finished:
                            assert chunk.finish_reason == common_pb2.FINISH_REASON_LENGTH and not chunk.error_code
                            finished.add(chunk.request_id)
                    if len(finished) == 6:
                        break
                outbox.put_nowait(None)
                assert tokens == {f"r{i}": 16 for i in range(6)}
                # 96 tokens in 6 concurrent requests: batched by engine step, not one message each.
                assert multi > 0 and batches < 96 / 2
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_router_sessions_stream_each_request_its_own_tokens_and_abort_stops_the_engine():
    async def main():
        server, servicer, address = await start_worker()
        sessions = Sessions(first_token_timeout_s=30, token_idle_timeout_s=30)
        try:
            client = sessions[address]
            short = [client.start(request(f"s{i}", 8 + i), {}) for i in range(3)]
            long = client.start(request("long", 5000), {})
            results = await asyncio.gather(*(drain(s) for s in short))
            assert [n for n, _ in results] == [8, 9, 10]
            assert all(last.finished for _, last in results)
            first = await long.next()
            assert first is not None and "long" in servicer.inflight
            client.abort("long")                       # the client went away
            deadline = time.monotonic() + 5
            while "long" in servicer.inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert "long" not in servicer.inflight      # the engine stopped decoding it
            assert servicer.engine.stats().running_requests == 0
        finally:
            await sessions.close()
            await server.stop(0)

    asyncio.run(main())


def test_a_request_the_worker_refuses_fails_alone():
    async def main():
        server, _, address = await start_worker()
        sessions = Sessions(first_token_timeout_s=30, token_idle_timeout_s=30)
        try:
            client = sessions[address]
            good = client.start(request("good", 12), {})
            bad = client.start(request("bad", 4, prompt=()), {})   # empty prompt: INVALID_ARGUMENT there
            with pytest.raises(StreamFailed, match="INVALID_ARGUMENT: prompt_token_ids"):
                await drain(bad)
            assert (await drain(good))[0] == 12
        finally:
            await sessions.close()
            await server.stop(0)

    asyncio.run(main())


def test_a_broken_session_fails_its_requests_and_the_next_start_opens_another():
    async def main():
        server, _, address = await start_worker()
        sessions = Sessions(first_token_timeout_s=30, token_idle_timeout_s=30)
        try:
            client = sessions[address]
            stream = client.start(request("cut", 5000), {})
            assert await stream.next() is not None
            await server.stop(0)                                     # the worker dies mid-stream
            with pytest.raises(StreamFailed):
                await asyncio.wait_for(drain(stream), timeout=10)
            assert not client.streams
        finally:
            await sessions.close()

    asyncio.run(main())


def test_the_watchdog_fails_a_stream_its_worker_went_silent_on():
    async def main():
        server, servicer, address = await start_worker()
        now = [0.0]
        sessions = Sessions(first_token_timeout_s=5, token_idle_timeout_s=2, clock=lambda: now[0])
        try:
            client = sessions[address]
            stream = client.start(request("quiet", 5000), {})
            assert await stream.next() is not None
            now[0] = 1_000.0                                         # nothing for a long while
            client.expire_idle(now[0], 5, 2)
            with pytest.raises(StreamFailed, match="sent nothing for 2s"):
                while True:
                    await stream.next()
            deadline = time.monotonic() + 5
            while "quiet" in servicer.inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert "quiet" not in servicer.inflight                  # and the worker was told to stop
        finally:
            await sessions.close()
            await server.stop(0)

    asyncio.run(main())
