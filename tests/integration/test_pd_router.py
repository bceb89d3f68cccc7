"""The router's P/D legs on real gRPC over loopback with two worker services (simulated engines,
whose KV hand-off is emulated and labelled so): the prefill leg on P, the decode leg on D with P's
transfer parameters, one stream to the client. The scheduler is scripted (a two-leg placement);
the KV path itself is tested on real vLLM engines in test_pd_kv.py."""

from __future__ import annotations

import asyncio

from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, scheduler_pb2, worker_pb2
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.tokenizer import Tokenizer
from services.worker.server import WorkerServicer
from tests.integration.test_preemption import start_servicer


class Recorder(WorkerServicer):
    """A worker service that keeps the requests it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[worker_pb2.WorkerGenerateRequest] = []
        self.aborts: list[str] = []

    async def run(self, request, parent):
        self.requests.append(request)
        async for chunk in super().run(request, parent):
            yield chunk

    async def Abort(self, request, context):
        self.aborts.append(request.request_id)
        return await super().Abort(request, context)


class ScriptedLink:
    """The scheduler's side of the router, scripted: every request is split P -> D."""

    def __init__(self, p: str, d: str) -> None:
        self.placement = scheduler_pb2.Placement(
            verdict=scheduler_pb2.VERDICT_ADMIT, instance_id="p", address=p, reason="scripted P/D", legs=[
                scheduler_pb2.Leg(role=common_pb2.ROLE_PREFILL, instance_id="p", address=p),
                scheduler_pb2.Leg(role=common_pb2.ROLE_DECODE, instance_id="d", address=d)])
        self.completes: list[scheduler_pb2.CompleteRequest] = []

    async def place(self, msg, timeout_s):
        return self.placement

    def take_ticket(self, spec, now_s):
        return None   # no standing placements: every request asks

    def complete(self, msg) -> None:
        self.completes.append(msg)

    async def close(self) -> None:
        pass


async def start_worker(name: str, model: str):
    return await start_servicer(name, model, Recorder)


async def _with_pd(body):
    model = str(ensure_default_model())
    (ps, pe, p, pa) = await start_worker("p", model)
    (ds, de, d, da) = await start_worker("d", model)
    core = RouterCore(RouterConfig(model=model, scheduler_address="unused:1"), Tokenizer.load(model), scheduler=None)
    core.link = ScriptedLink(pa, da)
    try:
        return await body(core, p, d)
    finally:
        await core.sessions.close()
        for server, engine in ((ps, pe), (ds, de)):
            await server.stop(None)
            await engine.shutdown()


def _request(max_tokens: int) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    request.token_ids.ids[:] = range(10, 50)
    return request


def test_a_split_request_streams_ps_first_token_then_ds_tokens_as_one_stream():
    async def body(core, p, d):
        ids, final = [], None
        async for item in core.generate(_request(12)):
            if isinstance(item, Placed):
                continue
            if item.HasField("delta"):
                ids += item.delta.token_ids
            else:
                final = item.final
        return ids, final, p.requests, d.requests, core.link.completes

    ids, final, p_reqs, d_reqs, completes = asyncio.run(_with_pd(body))
    (prefill,), (decode,) = p_reqs, d_reqs
    assert prefill.kv_transfer.do_remote_decode and list(prefill.prompt_token_ids) == list(range(10, 50))
    assert decode.kv_transfer.do_remote_prefill and decode.kv_transfer.transfer_id.startswith("sim-")
    assert decode.kv_transfer.num_tokens == 40
    assert list(decode.prompt_token_ids) == list(range(10, 50)) + ids[:1]   # P's token joins D's prompt
    assert decode.sampling.max_tokens == 11
    assert len(ids) == 12 and final.usage.completion_tokens == 12
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    # P is told free once its leg ended (leg PREFILL, on p); then the whole request ended
    assert [(c.leg, c.instance_id, c.outcome) for c in completes] == [
        (common_pb2.ROLE_PREFILL, "p", scheduler_pb2.OUTCOME_FINISHED),
        (common_pb2.ROLE_UNSPECIFIED, "p", scheduler_pb2.OUTCOME_FINISHED)]


def test_a_client_leaving_after_the_first_token_stops_the_legs_and_releases_ps_kv():
    async def body(core, p, d):
        stream = core.generate(_request(400))
        async for item in stream:
            if not isinstance(item, Placed) and item.HasField("delta"):
                break   # the client leaves after P's first token
        await stream.aclose()
        for _ in range(100):   # the release travels in the background
            if p.aborts:
                break
            await asyncio.sleep(0.02)
        return p.aborts, d.requests, d.inflight, core.link.completes

    p_aborts, d_reqs, d_inflight, completes = asyncio.run(_with_pd(body))
    # The client left while P's token was on its way: the decode leg never opened, and the abort
    # went to P, whose worker frees the staged KV (on vLLM: test_pd_kv's abort test).
    assert len(p_aborts) == 1 and not d_reqs and not d_inflight
    assert [c.outcome for c in completes][-1] == scheduler_pb2.OUTCOME_ABORTED
