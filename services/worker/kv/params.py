"""The KV transfer parameters, as vLLM's `kv_transfer_params` dict carries them (in on a request,
out on its final output), checked once here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The module vLLM loads our connector from (KVTransferConfig.kv_connector_module_path).
CONNECTOR_MODULE = "services.worker.kv.connector"
CONNECTOR_NAME = "HfxKvConnector"

MAX_LEASE_S = 600.0


class BadKvParams(ValueError):
    """kv_transfer_params that cannot be acted on; the message names the field."""


@dataclass(frozen=True)
class KvParams:
    do_remote_decode: bool = False   # in, on P: prefill only, stage the KV for a decode worker
    do_remote_prefill: bool = False  # in, on D: the prompt's KV is at remote_address under transfer_id
    remote_address: str = ""         # out of P / in to D: P's transfer server, HOST:PORT
    transfer_id: str = ""
    num_tokens: int = 0              # prompt tokens whose KV is staged (D recomputes the rest)
    num_blocks: int = 0
    lease_s: float = 0.0             # in, on P: how long the staged KV waits for D (0: P's default)
    lease_expiry_unix_s: float = 0.0  # out of P: when P frees the staged KV unread

    def __post_init__(self) -> None:
        if self.do_remote_decode and self.do_remote_prefill:
            raise BadKvParams("do_remote_decode and do_remote_prefill exclude each other")
        if self.do_remote_prefill:
            if not self.remote_address or ":" not in self.remote_address:
                raise BadKvParams("remote_address must be HOST:PORT when do_remote_prefill is set")
            if not self.transfer_id:
                raise BadKvParams("transfer_id must be set when do_remote_prefill is set")
            if self.num_tokens <= 0:
                raise BadKvParams("num_tokens must be positive when do_remote_prefill is set")
        if not 0 <= self.lease_s <= MAX_LEASE_S:
            raise BadKvParams(f"lease_s must be within 0..{MAX_LEASE_S:g}")

    @property
    def active(self) -> bool:
        return self.do_remote_decode or self.do_remote_prefill

    def to_vllm(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v}

    @classmethod
    def from_vllm(cls, params: dict[str, Any] | None) -> KvParams | None:
        if not params:
            return None
        known = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        return cls(**known)


def from_pb(msg: Any) -> KvParams:
    """KvParams from a worker_pb2.KvTransferParams; BadKvParams names what is wrong."""
    return KvParams(do_remote_decode=msg.do_remote_decode, do_remote_prefill=msg.do_remote_prefill,
                    remote_address=msg.remote_address, transfer_id=msg.transfer_id, num_tokens=msg.num_tokens,
                    num_blocks=msg.num_blocks, lease_s=msg.lease_s, lease_expiry_unix_s=msg.lease_expiry_unix_s)


def to_pb(params: KvParams) -> Any:
    from services.common.pb.hfx.v1 import worker_pb2

    return worker_pb2.KvTransferParams(**{k: v for k, v in params.__dict__.items() if v})
