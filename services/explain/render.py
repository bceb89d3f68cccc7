"""The text `hfx explain` prints for one request."""

from __future__ import annotations

import time

from services.explain.analysis import LABELS, Explanation, describe


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def text(exp: Explanation) -> str:
    m, slo = exp.measured, exp.slo
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exp.arrival_unix_s))
    verdict = "MET" if exp.met else ("MISSED " + ", ".join(f"{k.upper()} by {v:.0f} ms" for k, v in exp.missed.items())
                                     if exp.missed else exp.outcome or "not finished")
    lines = [
        f"request {exp.request_id}  (trace {exp.trace_id}, arrived {when}, outcome {exp.outcome or '-'})",
        f"  SLO: TTFT {m['ttft_ms']:.0f} of {slo['ttft_ms']:.0f} ms, TPOT {m['tpot_ms']:.1f} of {slo['tpot_ms']:.1f} ms"
        f" over {m['output_tokens']} tokens ({m['prompt_tokens']} prompt tokens): {verdict}",
    ]
    if exp.cause:
        lines.append(f"  cause: {exp.cause_text}")
    lines.append("  placement:")
    for p in exp.placements or ():
        extra = [f"queue {p.queue_wait_ms:.0f} ms"]
        if p.predicted_ttft_ms is not None and p.instance_id:
            extra.append(f"predicted TTFT {_ms(p.predicted_ttft_ms)}, slack {_ms(p.slack_ms)}")
        if p.budget_ms is not None:
            extra.append(f"budget {_ms(p.budget_ms)}")
        if p.load:
            extra.append("load seen: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in p.load.items()))
        kind = f"resumed after {p.resumed_tokens} tokens" if p.resumed_tokens else "placed"
        lines.append(f"    {kind}: {p.verdict} -> {p.instance_id or '-'} by {p.policy}: {p.reason}")
        lines.append(f"      {'; '.join(extra)}")
    if not exp.placements:
        lines.append("    (no scheduler span)")
    for pre in exp.preemptions:
        lines.append(f"  preempted on {pre['instance_id']} at +{pre['at_ms']:.0f} ms: {pre['reason']}")
    for name, split in (("time to first token", exp.ttft_breakdown_ms), ("decode", exp.decode_breakdown_ms)):
        if not split:
            continue
        total = sum(split.values())
        lines.append(f"  {name} ({total:.0f} ms):")
        for label, ms in split.items():
            lines.append(f"    {ms:8.1f} ms  {100 * ms / total:5.1f}%  {label:22s} {LABELS[label][1]}")
    for label, split in (("prefill_interference", exp.ttft_breakdown_ms), ("decode_interference", exp.decode_breakdown_ms)):
        if split.get(label):
            lines.append(f"  {describe(exp, label, split[label])}")
    lines.append(f"  spans from: {', '.join(exp.services) or '-'}")
    return "\n".join(lines)
