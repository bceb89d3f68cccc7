"""PNG plots of bench results (matplotlib, Agg backend: no display needed). Every plot names its
engine (`label`: simulated, or the live target) in its title."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def attainment_vs_rate(records: Sequence[dict], out_dir: Path, label: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in sorted({r["policy"] for r in records}):
        rs = sorted((r for r in records if r["policy"] == policy), key=lambda r: r["rate_rps"])
        ax.plot([r["rate_rps"] for r in rs], [100 * r["slo_attainment"] for r in rs], marker="o", label=policy)
    ax.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"SLO attainment vs rate ({label})", fontsize=9)
    ax.legend()
    path = out_dir / "attainment_vs_rate.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdfs(samples: dict[tuple[str, float], dict[str, list[float]]], out_dir: Path,
                 label: str) -> list[Path]:
    """One figure per metric: CDF of each policy's completed requests at the highest swept rate
    (a legend of every (policy, rate) pair becomes unreadable on a sweep)."""
    top_rate = max(rate for _, rate in samples)
    samples = {k: v for k, v in samples.items() if k[1] == top_rate}
    paths = []
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (policy, rate), values in sorted(samples.items()):
            xs = np.sort(np.array(values[metric], dtype=float))
            if xs.size:
                ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=f"{policy} @ {rate:g} rps")
        ax.set_xscale("log")
        ax.set_xlabel(metric.replace("_ms", " (ms)"))
        ax.set_ylabel("fraction of completed requests")
        ax.set_title(f"{metric} CDF ({label})", fontsize=9)
        ax.legend(fontsize=7)
        path = out_dir / f"cdf_{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def autoscale_timeline(results: Sequence[dict], rate_fn, out_dir: Path, label: str) -> Path:
    """Instances paid for (top), with the offered rate when known, and SLO attainment of the
    requests arriving in each 30 s bucket (bottom), one line per autoscaler."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        ts = [t for t, _, _ in r["timeline"]]
        top.step(ts, [n for _, n, _ in r["timeline"]], where="post", label=f"{r['autoscaler']} "
                 f"({r['instance_seconds']:.0f} inst-s, {r['slo_attainment']:.1%})")
        bottom.plot([t for t, _ in r["attainment_over_time"]], [100 * a for _, a in r["attainment_over_time"]],
                    label=r["autoscaler"])
    if rate_fn is not None and results:
        end = max(t for r in results for t, _, _ in r["timeline"])
        xs = np.linspace(0, end, 2000)
        ax2 = top.twinx()
        ax2.plot(xs, [rate_fn(x) for x in xs], color="grey", linewidth=0.7, alpha=0.6)
        ax2.set_ylabel("offered rate (req/s)", color="grey")
    top.set_ylabel("instances")
    top.legend(fontsize=7, loc="upper left")
    bottom.axhline(90, color="grey", linestyle=":", linewidth=1)
    bottom.set_ylabel("SLO attainment (%)")
    bottom.set_xlabel("time (s)")
    bottom.legend(fontsize=7)
    top.set_title(f"autoscalers on one trace ({label})", fontsize=9)
    path = out_dir / "autoscale_timeline.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
