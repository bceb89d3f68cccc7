"""The router's bound on requests in flight (both front doors share RouterCore.generate): past it,
a request is refused at once with RESOURCE_EXHAUSTED and a retry hint; the count returns to zero."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Rejected
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2
from services.router.core import Placed
from tests.integration.test_failover import _mesh, _teardown


def test_past_max_inflight_a_request_is_refused_with_a_retry_hint_and_the_count_returns_to_zero():
    model = str(ensure_default_model())

    async def main():
        workers, sched, server, rounds, core = await _mesh(model, max_failovers=0, max_inflight=2)
        try:
            request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=200, ignore_eos=True))
            request.token_ids.ids[:] = range(10, 30)
            placed = [asyncio.Event(), asyncio.Event()]

            async def run(k: int) -> int:
                n = 0
                async for item in core.generate(request):
                    if isinstance(item, Placed):
                        placed[k].set()
                    elif item.HasField("delta"):
                        n += len(item.delta.token_ids)
                return n

            running = [asyncio.create_task(run(k)) for k in range(2)]
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in placed)), 10)
            with pytest.raises(Rejected) as refused:
                async for _ in core.generate(request):
                    pass
            during = core.inflight
            done = await asyncio.gather(*running)
            return refused.value, during, done, core.inflight
        finally:
            await _teardown(workers, server, rounds, core)

    refused, during, done, after = asyncio.run(main())
    assert "limit of 2 requests in flight" in refused.message and refused.retry_after_ms > 0
    assert during == 2 and done == [200, 200] and after == 0


def test_a_long_prompt_is_tokenised_off_the_event_loop_and_a_short_one_on_it():
    import threading

    model = str(ensure_default_model())

    async def main():
        workers, sched, server, rounds, core = await _mesh(model, max_failovers=0, inline_tokenize_chars=1000)
        threads: list[int] = []
        encode = core.tokenizer.encode

        def spy(text):   # records where tokenising ran, then does it
            threads.append(threading.get_ident())
            return encode(text)

        core.tokenizer.encode = spy
        try:
            for text in ("hello " * 10, "hello " * 400):
                request = router_pb2.GenerateRequest(text=text, sampling=common_pb2.SamplingParams(max_tokens=2))
                async for _ in core.generate(request):
                    pass
            return threads, threading.get_ident()
        finally:
            await _teardown(workers, server, rounds, core)

    threads, loop_thread = asyncio.run(main())
    assert threads[0] == loop_thread and threads[1] != loop_thread
