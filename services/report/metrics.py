"""Measurement over finished simulations: SLO attainment, latency percentiles, goodput, cost.

A request meets its SLO when TTFT <= its TTFT SLO and its mean TPOT over the decode phase <= its
TPOT SLO. Rejected, failed and never-finished requests are misses. Latency percentiles cover the
requests that completed (a rejected request has no latency), so the report also counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from services.report.records import RequestRecord, RunResult

GOODPUT_ATTAINMENT = 0.9


def ttft_ms(r: RequestRecord) -> float | None:
    return None if r.first_token_s is None else (r.first_token_s - r.spec.arrival_s) * 1000.0


def tpot_ms(r: RequestRecord) -> float | None:
    if r.first_token_s is None or r.last_token_s is None or r.finish_s is None or r.verdict in ("reject", "failed"):
        return None
    return 0.0 if r.output_tokens <= 1 else (r.last_token_s - r.first_token_s) * 1000.0 / (r.output_tokens - 1)


def e2e_ms(r: RequestRecord) -> float | None:
    if r.finish_s is None or r.verdict in ("reject", "failed"):
        return None
    return (r.finish_s - r.spec.arrival_s) * 1000.0


def met_slo(r: RequestRecord) -> bool:
    t, p = ttft_ms(r), tpot_ms(r)
    return t is not None and p is not None and t <= r.spec.slo.ttft_ms and p <= r.spec.slo.tpot_ms


def percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    xs = np.array([v for v in values if v is not None], dtype=float)
    if xs.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(xs, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(xs.mean())}


def attainment(records: Sequence[RequestRecord]) -> float:
    return sum(met_slo(r) for r in records) / len(records) if records else 0.0


def attainment_over_time(records: Sequence[RequestRecord], bucket_s: float) -> list[tuple[float, float]]:
    """(bucket middle, attainment) of the requests arriving in each `bucket_s` of the run."""
    buckets: dict[int, list[bool]] = {}
    for r in records:
        buckets.setdefault(int(r.spec.arrival_s // bucket_s), []).append(met_slo(r))
    return [((k + 0.5) * bucket_s, sum(v) / len(v)) for k, v in sorted(buckets.items())]


@dataclass(frozen=True)
class RunReport:
    policy: str
    rate_rps: float
    requests: int
    slo_attainment: float
    per_class: dict
    ttft_ms: dict
    tpot_ms: dict
    e2e_ms: dict
    completed: int
    rejected: int
    failed: int
    best_effort: int
    instance_seconds: float
    makespan_s: float
    wall_s: float

    def record(self, goodput_rps: float | None) -> dict:
        return {
            "policy": self.policy, "rate_rps": self.rate_rps, "requests": self.requests,
            "slo_attainment": self.slo_attainment, "per_class": self.per_class, "goodput_rps": goodput_rps,
            "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms,
            "completed": self.completed, "rejected": self.rejected, "failed": self.failed,
            "best_effort": self.best_effort, "instance_seconds": self.instance_seconds,
            "makespan_s": self.makespan_s, "wall_s": self.wall_s, "engine": "sim (simulated)",
        }


def report(policy: str, rate_rps: float, result: RunResult, wall_s: float = 0.0) -> RunReport:
    recs = result.records
    classes = sorted({r.spec.task_class for r in recs})
    per_class = {}
    for c in classes:
        rs = [r for r in recs if r.spec.task_class == c]
        # E2E per class too: policies that reject complete a different mix, so the overall mean
        # alone would compare unlike populations.
        per_class[c] = {"requests": len(rs), "slo_attainment": attainment(rs),
                        "ttft_ms": percentiles(ttft_ms(r) for r in rs),
                        "tpot_ms": percentiles(tpot_ms(r) for r in rs),
                        "e2e_ms": percentiles(e2e_ms(r) for r in rs),
                        "rejected": sum(r.verdict == "reject" for r in rs)}
    return RunReport(
        policy, rate_rps, len(recs), attainment(recs), per_class,
        percentiles(ttft_ms(r) for r in recs if r.verdict not in ("reject", "failed")),
        percentiles(tpot_ms(r) for r in recs), percentiles(e2e_ms(r) for r in recs),
        completed=sum(e2e_ms(r) is not None for r in recs),
        rejected=sum(r.verdict == "reject" for r in recs), failed=sum(r.verdict == "failed" for r in recs),
        best_effort=sum(r.verdict == "best_effort" for r in recs),
        instance_seconds=result.instance_seconds, makespan_s=result.makespan_s, wall_s=wall_s)


def goodput(reports: Sequence[RunReport]) -> float | None:
    """Highest swept rate whose attainment is >= 90% (None when no swept rate reaches it)."""
    ok = [r.rate_rps for r in reports if r.slo_attainment >= GOODPUT_ATTAINMENT]
    return max(ok) if ok else None


# The headline comparison is taken where the baseline has collapsed: the first swept rate
# at which it attains at most this share.
COLLAPSE_ATTAINMENT = 0.25


def comparison(records: Sequence[dict], policy: str = "hfx", baseline: str = "fcfs",
               at_most: float = COLLAPSE_ATTAINMENT) -> dict | None:
    """`policy` against `baseline` over one sweep's records (the bench JSON's `records`).

    - at the lowest swept rate where `baseline` attains <= `at_most` (None if none does): both
      attainments, their ratio, and how much lower `policy`'s mean E2E is (a share of baseline's;
      over completed requests, so a policy that rejects completes a different mix);
    - goodput of `policy` over the best goodput among every other policy in the records (None
      when some goodput is undefined: no swept rate reached 90%).
    Returns None when either policy is missing from the records.
    """
    by = {(r["policy"], r["rate_rps"]): r for r in records}
    names = {r["policy"] for r in records}
    if policy not in names or baseline not in names:
        return None
    out: dict = {"policy": policy, "baseline": baseline, "at_most": at_most, "rate_rps": None}
    for rate in sorted(rate for name, rate in by if name == baseline):
        b, p = by[(baseline, rate)], by.get((policy, rate))
        if p is None or b["slo_attainment"] > at_most:
            continue
        pe, be = p["e2e_ms"]["mean"], b["e2e_ms"]["mean"]
        out.update(rate_rps=rate, attainment=p["slo_attainment"], baseline_attainment=b["slo_attainment"],
                   attainment_ratio=(p["slo_attainment"] / b["slo_attainment"]) if b["slo_attainment"] > 0 else None,
                   e2e_mean_ms=pe, baseline_e2e_mean_ms=be,
                   e2e_mean_lower=(1.0 - pe / be) if pe is not None and be else None)
        break
    goodputs = {r["policy"]: r["goodput_rps"] for r in records}
    others = [g for name, g in goodputs.items() if name != policy]
    mine = goodputs[policy]
    out["goodput_rps"] = mine
    out["best_other_goodput_rps"] = None if None in others or not others else max(others)
    out["goodput_ratio"] = (mine / out["best_other_goodput_rps"]
                            if mine is not None and out["best_other_goodput_rps"] else None)
    return out


def describe_comparison(c: dict) -> str:
    """One line for a person, e.g. `hfx vs fcfs at 28 req/s (first swept rate where fcfs attains
    <= 25%): attainment 74.8% vs 9.8% (7.63x); mean E2E 1161 vs 7055 ms (83.5% lower); goodput 16
    vs 12 req/s, the best other policy (1.33x)`."""
    p, b = c["policy"], c["baseline"]
    if c["rate_rps"] is None:
        head = f"{p} vs {b}: {b} attains more than {c['at_most']:.0%} at every swept rate"
    else:
        ratio = "inf" if c["attainment_ratio"] is None else f"{c['attainment_ratio']:.2f}x"
        e2e = ("mean E2E n/a" if c["e2e_mean_lower"] is None else
               f"mean E2E {c['e2e_mean_ms']:.0f} vs {c['baseline_e2e_mean_ms']:.0f} ms "
               f"({c['e2e_mean_lower']:.1%} lower)")
        head = (f"{p} vs {b} at {c['rate_rps']:g} req/s (first swept rate where {b} attains <= {c['at_most']:.0%}): "
                f"attainment {c['attainment']:.1%} vs {c['baseline_attainment']:.1%} ({ratio}); {e2e}")
    fmt = lambda g: "none" if g is None else f"{g:g}"  # noqa: E731
    if c["goodput_ratio"] is not None:
        tail = (f"goodput {fmt(c['goodput_rps'])} vs {fmt(c['best_other_goodput_rps'])} req/s, the best other "
                f"policy ({c['goodput_ratio']:.2f}x)")
    else:
        tail = (f"goodput (req/s) {p} {fmt(c['goodput_rps'])}, best other {fmt(c['best_other_goodput_rps'])}: "
                "no ratio (a policy reached 90% at no swept rate)")
    return f"{head}; {tail}"
