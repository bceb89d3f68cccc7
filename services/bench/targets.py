"""Clients for live benchmark targets: the HFX router (gRPC) and any OpenAI-compatible HTTP server
(/v1/completions, streaming). Each sends one request with its SLOs and reports when its tokens
arrived, on the caller's clock. Rejections (RESOURCE_EXHAUSTED / HTTP 429) and failures are
outcomes, not exceptions."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc


@dataclass(frozen=True)
class LiveRequest:
    prompt_ids: list[int]
    max_tokens: int
    ttft_slo_ms: float
    tpot_slo_ms: float
    priority: int
    task_class: str      # "" sends none


@dataclass
class LiveResult:
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_s: float | None = None
    tokens: int = 0
    verdict: str = "admit"    # admit (answered), reject, failed
    reason: str = ""
    retry_after_ms: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # kept only when asked (probes)


class Target(Protocol):
    name: str

    async def send(self, req: LiveRequest, timeout_s: float, keep_times: bool = False) -> LiveResult: ...

    async def close(self) -> None: ...


def _on_tokens(result: LiveResult, n: int, keep_times: bool) -> None:
    now = time.monotonic()
    if result.first_token_s is None:
        result.first_token_s = now
    result.last_token_s = now
    result.tokens += n
    if keep_times:
        result.token_times_s.extend([now] * n)


class GrpcTarget:
    """The HFX router. Several channels, so one HTTP/2 connection does not serialise the load."""

    def __init__(self, address: str, channels: int = 4) -> None:
        self.name = f"grpc://{address}"
        self._channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                          for _ in range(channels)]
        self._stubs = [router_pb2_grpc.RouterStub(c) for c in self._channels]
        self._next = 0

    async def send(self, req: LiveRequest, timeout_s: float, keep_times: bool = False) -> LiveResult:
        msg = router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=req.prompt_ids), task_class=req.task_class, priority=req.priority,
            sampling=common_pb2.SamplingParams(max_tokens=req.max_tokens, temperature=0.0, ignore_eos=True),
            slo=common_pb2.Slo(ttft_ms=req.ttft_slo_ms, tpot_ms=req.tpot_slo_ms),
        )
        self._next = (self._next + 1) % len(self._stubs)
        result = LiveResult()
        call = self._stubs[self._next].Generate(msg, timeout=timeout_s)
        try:
            async for out in call:
                if out.HasField("delta") and out.delta.token_ids:
                    _on_tokens(result, len(out.delta.token_ids), keep_times)
                elif out.HasField("final"):
                    result.finish_s = time.monotonic()
            if result.finish_s is None:
                result.verdict, result.reason = "failed", "stream ended without a final message"
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                result.verdict = "reject"
                retry = dict(err.trailing_metadata() or ()).get("retry-after-ms")
                result.retry_after_ms = float(retry) if retry else None
            else:
                result.verdict = "failed"
            result.reason = f"{err.code().name}: {err.details()}"
        finally:
            call.cancel()
        return result

    async def close(self) -> None:
        for c in self._channels:
            await c.close()


class HttpTarget:
    """An OpenAI-compatible server: POST /v1/completions with stream=true, token-id prompt,
    ignore_eos (a vLLM extension), and the SLOs as x-slo-* headers (ignored by servers that do
    not schedule by SLO)."""

    def __init__(self, base_url: str, model: str = "", api_key: str = "") -> None:
        import aiohttp

        self.name = base_url.rstrip("/")
        self.model = model
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def resolve_model(self, timeout_s: float = 10.0) -> str:
        if not self.model:
            import aiohttp

            async with self._session.get(f"{self.name}/v1/models", headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                resp.raise_for_status()
                data = (await resp.json()).get("data") or []
                if not data:
                    raise RuntimeError(f"{self.name}/v1/models lists no model; pass --target-model")
                self.model = data[0]["id"]
        return self.model

    async def send(self, req: LiveRequest, timeout_s: float, keep_times: bool = False) -> LiveResult:
        import aiohttp

        body = {"model": self.model, "prompt": req.prompt_ids, "max_tokens": req.max_tokens, "temperature": 0.0,
                "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
        headers = {**self._headers, "x-slo-ttft-ms": f"{req.ttft_slo_ms:.3f}", "x-slo-tpot-ms": f"{req.tpot_slo_ms:.3f}",
                   "x-priority": str(req.priority)}
        if req.task_class:
            headers["x-task-class"] = req.task_class
        result = LiveResult()
        try:
            async with self._session.post(f"{self.name}/v1/completions", json=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:1000]
                    result.verdict = "reject" if resp.status == 429 else "failed"
                    result.reason = f"HTTP {resp.status}: {text}"
                    retry = resp.headers.get("retry-after-ms")
                    result.retry_after_ms = float(retry) if retry else None
                    return result
                await self._read_stream(resp, result, keep_times)
        except (aiohttp.ClientError, TimeoutError) as err:
            result.verdict, result.reason = "failed", f"{type(err).__name__}: {err}"
        return result

    async def _read_stream(self, resp, result: LiveResult, keep_times: bool) -> None:
        usage_tokens = None
        async for raw in resp.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                result.finish_s = time.monotonic()
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or ():
                if choice.get("text") or choice.get("token_ids"):
                    _on_tokens(result, 1, keep_times)  # one chunk per engine step and request
        if result.finish_s is None:
            result.verdict, result.reason = "failed", "stream ended without [DONE]"
        elif usage_tokens is not None:
            result.tokens = int(usage_tokens)

    async def close(self) -> None:
        await self._session.close()


def check_address(address: str) -> str:
    """The address as given, or ValueError saying what a target address looks like."""
    if address.startswith(("http://", "https://")):
        return address
    host, _, port = address.removeprefix("grpc://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--target {address!r}: expected grpc://HOST:PORT, HOST:PORT or http://HOST:PORT")
    return address


def make_target(address: str, model: str = "", api_key: str = "") -> Target:
    """grpc://host:port or host:port is the HFX router; http(s)://... an OpenAI-compatible server."""
    check_address(address)
    if address.startswith(("http://", "https://")):
        return HttpTarget(address, model, api_key)
    return GrpcTarget(address.removeprefix("grpc://"))
