"""A request's waterfall as a PNG (matplotlib, Agg backend: no display needed): one row per
place (router, scheduler, each instance), a bar per labelled interval, with the SLO deadlines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.explain.analysis import LABELS, Explanation  # noqa: E402

_COLOURS = {"admission": "#9e9e9e", "queue": "#ffb300", "prefill": "#1e88e5", "prefill_interference": "#e53935",
            "decode": "#43a047", "decode_interference": "#d81b60", "preemption": "#6a1b9a", "kv_transfer": "#00897b",
            "relay": "#cfd8dc"}


def waterfall(exp: Explanation, path: Path) -> Path:
    lanes = []
    for iv in exp.intervals:
        if iv.lane not in lanes:
            lanes.append(iv.lane)
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * max(1, len(lanes))))
    t0 = exp.arrival_unix_s
    # Draw low priority first, so what counts (the higher label) is on top where bars overlap.
    for iv in sorted(exp.intervals, key=lambda iv: LABELS[iv.label][0]):
        ax.barh(lanes.index(iv.lane), (iv.end_s - iv.start_s) * 1000.0, left=(iv.start_s - t0) * 1000.0,
                color=_COLOURS.get(iv.label, "#795548"), edgecolor="white", linewidth=0.5, height=0.6)
    ttft_deadline = exp.slo["ttft_ms"]
    ax.axvline(ttft_deadline, color="black", linestyle="--", linewidth=1)
    ax.text(ttft_deadline, -0.7, " TTFT target", fontsize=7, va="bottom")
    if exp.measured["output_tokens"]:
        ax.axvline(exp.measured["ttft_ms"], color="red" if "ttft" in exp.missed else "green", linewidth=1)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("ms since arrival")
    used = sorted({iv.label for iv in exp.intervals}, key=lambda k: -LABELS[k][0])
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS.get(k, "#795548")) for k in used]
    ax.legend(handles, used, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    verdict = "met" if exp.met else f"missed {', '.join(exp.missed) or exp.outcome}"
    ax.set_title(f"{exp.request_id}: {verdict}" + (f" - {exp.cause}" if exp.cause else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
