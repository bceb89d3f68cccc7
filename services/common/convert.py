"""Proto <-> domain conversion. Wire types become domain types here, once, and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping

from services.common import domain as d
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2

# The generated enum types are int subclasses: the *_TO_PB maps give them, the *_FROM_PB maps take
# any int off the wire (a message field, or a number a test builds).
_ROLE_TO_PB: dict[d.Role, common_pb2.Role] = {
    d.Role.COLOCATED: common_pb2.ROLE_COLOCATED,
    d.Role.PREFILL: common_pb2.ROLE_PREFILL,
    d.Role.DECODE: common_pb2.ROLE_DECODE,
}
_ROLE_FROM_PB: dict[int, d.Role] = {v: k for k, v in _ROLE_TO_PB.items()}
_VERDICT_TO_PB: dict[d.Verdict, scheduler_pb2.Verdict] = {
    d.Verdict.ADMIT: scheduler_pb2.VERDICT_ADMIT,
    d.Verdict.BEST_EFFORT: scheduler_pb2.VERDICT_BEST_EFFORT,
    d.Verdict.REJECT: scheduler_pb2.VERDICT_REJECT,
}
_VERDICT_FROM_PB: dict[int, d.Verdict] = {v: k for k, v in _VERDICT_TO_PB.items()}
_FINISH_TO_PB: dict[d.FinishReason, common_pb2.FinishReason] = {
    d.FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    d.FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    d.FinishReason.ABORT: common_pb2.FINISH_REASON_ABORT,
    d.FinishReason.ERROR: common_pb2.FINISH_REASON_ERROR,
}
_FINISH_FROM_PB: dict[int, d.FinishReason] = {v: k for k, v in _FINISH_TO_PB.items()}


def role_to_pb(role: d.Role) -> common_pb2.Role:
    return _ROLE_TO_PB[role]


def role_from_pb(value: int) -> d.Role:
    return _ROLE_FROM_PB.get(value, d.Role.COLOCATED)


def role_asked(value: int) -> d.Role | None:
    """A role a caller asked for (SetRole): None when unset or not a role, never a default."""
    return _ROLE_FROM_PB.get(value)


def registry_views(instances) -> tuple[d.InstanceView, ...]:
    """Registry entries as the policies' InstanceViews (registry facts only: id, address, role)."""
    return tuple(d.InstanceView(i.instance_id, i.address, role=role_from_pb(i.role), max_model_len=i.max_model_len)
                 for i in instances)


def verdict_to_pb(verdict: d.Verdict) -> scheduler_pb2.Verdict:
    return _VERDICT_TO_PB[verdict]


def verdict_from_pb(value: int) -> d.Verdict:
    return _VERDICT_FROM_PB[value]


def finish_to_pb(reason: d.FinishReason | None) -> common_pb2.FinishReason:
    return _FINISH_TO_PB[reason] if reason else common_pb2.FINISH_REASON_UNSPECIFIED


def finish_from_pb(value: int) -> d.FinishReason | None:
    return _FINISH_FROM_PB.get(value)


def slo_to_pb(slo: d.Slo) -> common_pb2.Slo:
    return common_pb2.Slo(ttft_ms=slo.ttft_ms, tpot_ms=slo.tpot_ms)


def slo_from_pb(pb: common_pb2.Slo) -> d.Slo:
    return d.Slo(ttft_ms=pb.ttft_ms, tpot_ms=pb.tpot_ms)


def sampling_to_pb(s: d.Sampling) -> common_pb2.SamplingParams:
    pb = common_pb2.SamplingParams(
        max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop),
        ignore_eos=s.ignore_eos,
    )
    if s.seed is not None:
        pb.seed = s.seed
    return pb


def sampling_from_pb(pb: common_pb2.SamplingParams) -> d.Sampling:
    """Validation of ranges is the router's job; this only translates (0 top_p means unset)."""
    return d.Sampling(
        max_tokens=pb.max_tokens,
        temperature=pb.temperature,
        top_p=pb.top_p or 1.0,
        seed=pb.seed if pb.HasField("seed") else None,
        stop=tuple(pb.stop),
        ignore_eos=pb.ignore_eos,
    )


def spec_to_pb(spec: d.RequestSpec) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        request_id=spec.request_id, prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens,
        slo=slo_to_pb(spec.slo), priority=spec.priority, task_class=spec.task_class,
        tenant=spec.tenant, arrival_unix_s=spec.arrival_s, resumed_tokens=spec.resumed_tokens,
    )


def spec_from_pb(pb: scheduler_pb2.PlaceRequest) -> d.RequestSpec:
    return d.RequestSpec(
        request_id=pb.request_id, prompt_tokens=pb.prompt_tokens, max_tokens=pb.max_tokens,
        slo=slo_from_pb(pb.slo), priority=pb.priority, task_class=pb.task_class or "default",
        tenant=pb.tenant, arrival_s=pb.arrival_unix_s, resumed_tokens=pb.resumed_tokens,
    )


def load_to_pb(instance_id: str, load: d.InstanceLoad) -> common_pb2.LoadReport:
    return common_pb2.LoadReport(
        instance_id=instance_id, running_requests=load.running_requests,
        waiting_requests=load.waiting_requests, kv_usage=load.kv_usage,
        kv_capacity_tokens=load.kv_capacity_tokens, recent_step_ms=list(load.recent_step_ms),
        reported_unix_s=load.reported_s, draining=load.draining, steps_total=load.steps_total,
        recent_steps=[common_pb2.StepSample(prefill_tokens=st.prefill_tokens, decode_seqs=st.decode_seqs,
                                            kv_tokens=st.kv_tokens, step_ms=st.step_ms) for st in load.recent_steps],
        reports_step=load.reports_step,
        step_in_flight=None if load.step_in_flight is None else common_pb2.StepInFlight(
            started_unix_s=load.step_in_flight.started_s, prefill_tokens=load.step_in_flight.prefill_tokens,
            decode_seqs=load.step_in_flight.decode_seqs, kv_tokens=load.step_in_flight.kv_tokens),
    )


def load_from_pb(pb: common_pb2.LoadReport) -> d.InstanceLoad:
    return d.InstanceLoad(
        running_requests=pb.running_requests, waiting_requests=pb.waiting_requests,
        kv_usage=pb.kv_usage, kv_capacity_tokens=pb.kv_capacity_tokens,
        recent_step_ms=tuple(pb.recent_step_ms), reported_s=pb.reported_unix_s, draining=pb.draining,
        recent_steps=tuple(d.StepSample(st.prefill_tokens, st.decode_seqs, st.kv_tokens, st.step_ms)
                           for st in pb.recent_steps),
        steps_total=pb.steps_total, reports_step=pb.reports_step,
        step_in_flight=d.StepInFlight(pb.step_in_flight.started_unix_s, pb.step_in_flight.prefill_tokens,
                                      pb.step_in_flight.decode_seqs, pb.step_in_flight.kv_tokens)
        if pb.reports_step and pb.HasField("step_in_flight") else None,
    )


def decision_to_placement(decision: d.Decision, address: str, policy: str,
                          leg_addresses: Mapping[str, str] | None = None) -> scheduler_pb2.Placement:
    """`address` is the first leg's; `leg_addresses` (instance id -> address) the others', for P/D."""
    addresses = dict(leg_addresses or {})
    if decision.instance_id:
        addresses.setdefault(decision.instance_id, address)
    legs = [scheduler_pb2.Leg(role=role_to_pb(leg.role), instance_id=leg.instance_id,
                              address=addresses.get(leg.instance_id, ""))
            for leg in decision.legs]
    return scheduler_pb2.Placement(
        verdict=verdict_to_pb(decision.verdict), instance_id=decision.instance_id, address=address,
        reason=decision.reason, policy=policy, retry_after_ms=decision.retry_after_ms,
        predicted_ttft_ms=decision.predicted_ttft_ms, slack_ms=decision.slack_ms, legs=legs,
    )


def grant_to_ticket(grant: d.Grant, ticket_id: str, address: str, policy: str) -> scheduler_pb2.Ticket:
    b = grant.bound
    return scheduler_pb2.Ticket(
        ticket_id=ticket_id, instance_id=grant.instance_id, address=address,
        max_prompt_tokens=b.max_prompt_tokens, max_tokens=b.max_tokens, min_ttft_ms=b.min_ttft_ms,
        min_tpot_ms=b.min_tpot_ms, predicted_ttft_ms=grant.predicted_ttft_ms, rank=grant.rank,
        reason=grant.reason, policy=policy,
    )


def ticket_bound(ticket: scheduler_pb2.Ticket) -> d.TicketBound:
    return d.TicketBound(ticket.max_prompt_tokens, ticket.max_tokens, ticket.min_ttft_ms, ticket.min_tpot_ms)


def running_from_pb(pb: common_pb2.RunningEntry) -> d.ReportedRun:
    return d.ReportedRun(pb.request_id, pb.prompt_tokens, pb.max_tokens, pb.output_tokens, slo_from_pb(pb.slo),
                         pb.priority, pb.started_unix_s)
