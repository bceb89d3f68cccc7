"""GenerateResponse streams -> OpenAI completion / chat responses and their SSE chunks. Pure."""

from __future__ import annotations

import json

from services.common.pb.hfx.v1 import common_pb2, router_pb2

_FINISH = {common_pb2.FINISH_REASON_LENGTH: "length", common_pb2.FINISH_REASON_STOP: "stop",
           common_pb2.FINISH_REASON_ABORT: "abort"}  # "abort" as vLLM reports it


def finish_reason(final: router_pb2.FinalResult) -> str:
    return _FINISH.get(final.finish_reason, "stop")


def usage(final: router_pb2.FinalResult) -> dict:
    u = final.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


class Shaper:
    """Builds the JSON objects of one response; `chat` picks the chat or completions shape."""

    def __init__(self, chat: bool, response_id: str, model: str, created_s: int, token_ids: bool) -> None:
        self.chat = chat
        self.id = response_id
        self.model = model
        self.created = created_s
        self.token_ids = token_ids
        self._role_sent = False
        # Every token's event is the same JSON around its text (and ids): rendered once here.
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = json.dumps({"id": response_id, "object": kind, "created": created_s, "model": model},
                          separators=(",", ":"))[:-1]
        opening = '"delta":{"content":' if chat else '"text":'
        self._delta_prefix = f'data: {head},"choices":[{{"index":0,"logprobs":null,"finish_reason":null,{opening}'
        self._delta_suffix = "}" if chat else ""

    def _envelope(self, kind: str, choices: list) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, text: str, ids: list[int], finish: str | None) -> dict:
        """One streamed event: a delta of text (and ids), or the closing one with a finish reason."""
        choice: dict = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            delta: dict = {"content": text} if text or finish is None else {}
            if not self._role_sent:
                # The role rides on the first token's chunk, so clients time TTFT on real tokens.
                delta["role"] = "assistant"
                self._role_sent = True
            choice["delta"] = delta
        else:
            choice["text"] = text
        if self.token_ids:
            choice["token_ids"] = ids
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def delta_event(self, text: str, ids) -> bytes:
        """`sse(self.chunk(text, ids, None))`, byte for byte, without building the dict: this
        runs once per token."""
        if self.chat and (not self._role_sent or not text):
            return sse(self.chunk(text, list(ids), None))
        out = self._delta_prefix + json.dumps(text) + self._delta_suffix
        if self.token_ids:
            out += ',"token_ids":[' + ",".join(map(str, ids)) + "]"
        return (out + "}]}\n\n").encode()

    def usage_chunk(self, final: router_pb2.FinalResult) -> dict:
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        out["usage"] = usage(final)
        return out

    def whole(self, text: str, ids: list[int], final: router_pb2.FinalResult) -> dict:
        """The non-streaming response."""
        choice: dict = {"index": 0, "logprobs": None, "finish_reason": finish_reason(final)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if self.token_ids:
            choice["token_ids"] = ids
        out = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        out["usage"] = usage(final)
        return out
