"""One rule for merging a request's consecutive worker chunks into one (the worker's session
coalescing and the router's catch-up both use it): nothing is lost or reordered, and the merged
chunk ends the request when the later one did."""

from __future__ import annotations

from services.common.pb.hfx.v1 import worker_pb2


def can_merge(held: worker_pb2.WorkerChunk, chunk: worker_pb2.WorkerChunk) -> bool:
    """Whether `chunk` may ride in `held`: same request, `held` not final, neither an error."""
    return (held.request_id == chunk.request_id and not held.finished
            and not held.error_code and not chunk.error_code)


def merge_into(held: worker_pb2.WorkerChunk, chunk: worker_pb2.WorkerChunk) -> None:
    """Appends `chunk` (a later step of the same request) to `held`, in place."""
    held.token_ids.extend(chunk.token_ids)
    held.text += chunk.text
    if chunk.prompt_tokens:
        held.prompt_tokens = chunk.prompt_tokens
    if chunk.finished:
        held.finished, held.finish_reason = True, chunk.finish_reason
        if chunk.HasField("kv_transfer"):
            held.kv_transfer.CopyFrom(chunk.kv_transfer)
