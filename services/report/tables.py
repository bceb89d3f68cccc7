"""A sweep's printed table, its JSON records and its latency samples: the same for the simulator
(`hfx sim`, `hfx bench --sim`) and live runs (`hfx bench --target / --live-policies`)."""

from __future__ import annotations

from services.report.metrics import RunReport, comparison, describe_comparison, e2e_ms, goodput, tpot_ms, ttft_ms
from services.report.records import RunResult


def records_of(reports: list[RunReport]) -> list[dict]:
    """The JSON records of a sweep, each with its policy's goodput over the swept rates."""
    by_policy: dict[str, list[RunReport]] = {}
    for r in reports:
        by_policy.setdefault(r.policy, []).append(r)
    return [r.record(goodput(by_policy[r.policy])) for r in reports]


def samples_of(result: RunResult) -> dict[str, list[float]]:
    """Latencies of the completed requests, for the CDF plots."""
    recs = result.records
    return {"ttft_ms": [v for r in recs if e2e_ms(r) is not None and (v := ttft_ms(r)) is not None],
            "tpot_ms": [v for r in recs if (v := tpot_ms(r)) is not None],
            "e2e_ms": [v for r in recs if (v := e2e_ms(r)) is not None]}


def print_table(records: list[dict], label: str) -> None:
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"{'policy':<11}{'rate':>7}{'attain':>8}{'goodput':>8}{'ttft p50':>9}{'p99':>8}{'tpot p50':>9}"
          f"{'p99':>7}{'e2e mean':>9}{'p99':>8}{'done':>6}{'rej':>6}{'b.e.':>6}{'wall s':>7}  per class")
    for r in records:
        classes = " ".join(f"{c}={v['slo_attainment']:.0%}" for c, v in r["per_class"].items())
        gp = "-" if r["goodput_rps"] is None else f"{r['goodput_rps']:g}"
        print(f"{r['policy']:<11}{r['rate_rps']:>7g}{r['slo_attainment']:>8.1%}{gp:>8}{f(r['ttft_ms']['p50']):>9}"
              f"{f(r['ttft_ms']['p99']):>8}{r['tpot_ms']['p50'] or 0:>9.1f}{r['tpot_ms']['p99'] or 0:>7.1f}"
              f"{f(r['e2e_ms']['mean']):>9}{f(r['e2e_ms']['p99']):>8}{r['completed']:>6}{r['rejected']:>6}"
              f"{r['best_effort']:>6}{r['wall_s']:>7.1f}  {classes}")
    print(f"({label}; attainment counts rejected/failed as misses; latencies over completed requests)")


def print_comparison(records: list[dict]) -> dict | None:
    """The hfx-vs-fcfs headline of a sweep, printed when both policies ran (else None)."""
    summary = comparison(records)
    if summary is not None:
        print(describe_comparison(summary))
    return summary
