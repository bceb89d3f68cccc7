"""The Redis key schema. Every key HFX reads or writes is spelled here and nowhere else.

Layout (prefix defaults to "hfx", so clusters can share one Redis under different prefixes):
  {p}:instance:{id}        hash   registry entry (Instance proto bytes under "pb"); TTL = heartbeat TTL
  {p}:instances            set    ids of instances ever registered (pruned when their entry expires)
  {p}:load:{id}            string LoadReport proto bytes; TTL = heartbeat TTL
  {p}:profile:{id}         string fitted latency model (JSON) of an instance
  {p}:request:{id}         hash   durable request record (state, instance, timings) for recovery
  {p}:scale:{decision_id}  string applied scaling decision (JSON), for idempotence
  {p}:draining             set    ids of instances being drained: the scheduler places nothing new there
  {p}:autoscale            string the autoscaler's last tick (JSON: desired, actual, last decision, reason)
  {p}:standby              string the scaler's standby pool (JSON: ready, starting, RSS, cost, last hand-outs)
  {p}:links                hash   P-D links: field "{prefill}>{decode}" -> JSON {state, linked_unix_s, warmup_ms, reason}
  {p}:linker               string present while a link manager (the scaler) keeps {p}:links; TTL = heartbeat TTL.
                                  While it is there the scheduler pairs only linked P and D instances.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hfx"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}"

    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def load(self, instance_id: str) -> str:
        return f"{self.prefix}:load:{instance_id}"

    def profile(self, instance_id: str) -> str:
        return f"{self.prefix}:profile:{instance_id}"

    def request(self, request_id: str) -> str:
        return f"{self.prefix}:request:{request_id}"

    def scale_decision(self, decision_id: str) -> str:
        return f"{self.prefix}:scale:{decision_id}"

    def draining(self) -> str:
        return f"{self.prefix}:draining"

    def autoscale(self) -> str:
        return f"{self.prefix}:autoscale"

    def standby(self) -> str:
        return f"{self.prefix}:standby"

    def links(self) -> str:
        return f"{self.prefix}:links"

    def linker(self) -> str:
        return f"{self.prefix}:linker"

    @staticmethod
    def link_field(prefill_id: str, decode_id: str) -> str:
        return f"{prefill_id}>{decode_id}"

    @staticmethod
    def link_pair(field: str) -> tuple[str, str]:
        prefill_id, _, decode_id = field.partition(">")
        return prefill_id, decode_id
