"""Metric helpers: bounded reason kinds, and what one request's end records."""

from __future__ import annotations

import pytest

from services.common import metrics


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_reason_kinds_are_bounded():
    assert metrics.reason_kind("reject", "queue full (10 waiting)") == "queue_full"
    assert metrics.reason_kind("reject", "waited 30s in queue with no instance able to take it") == "queue_timeout"
    assert metrics.reason_kind("reject", "cannot meet TTFT 5 ms: slack -3 ms") == "slo_unreachable"
    assert metrics.reason_kind("best_effort", "best effort (slack 3 ms, SLO out of reach)") == "best_effort"
    assert metrics.reason_kind("admit", "slack 1995 ms; predicted TTFT 4 of 2000 ms") == "placed"
    assert metrics.reason_kind("reject", "something new a policy says") == "policy"


def test_record_request_counts_outcome_slo_and_latency():
    before = sample("hfx_router_ttft_seconds_count", task_class="unit")
    metrics.record_request("unit", "finished", True, ttft_ms=20, tpot_ms=5, e2e_ms=60, output_tokens=3)
    metrics.record_request("unit", "rejected")
    metrics.record_request("unit", "invalid")
    assert sample("hfx_router_requests_total", task_class="unit", outcome="finished") == 1
    assert sample("hfx_router_slo_total", task_class="unit", result="met") == 1
    assert sample("hfx_router_slo_total", task_class="unit", result="missed") == 1  # the rejection; invalid is not counted
    assert sample("hfx_router_ttft_seconds_count", task_class="unit") == before + 1
    assert sample("hfx_router_ttft_seconds_sum", task_class="unit") == 0.02


def test_instances_that_leave_lose_their_series():
    metrics.set_instance_load("w-a", 1, 0, 0.5, 1)
    metrics.set_instance_load("w-b", 2, 1, 0.25, 2)
    metrics.forget_instances({"w-b"})
    assert metrics.REGISTRY.get_sample_value("hfx_instance_running_requests", {"instance": "w-a"}) is None
    assert sample("hfx_instance_running_requests", instance="w-b") == 2


def test_kv_transfer_stats_become_gauges_by_reason_and_outcome():
    from services.common import metrics as m

    m.set_worker_kv("kvw", {"leases": 2, "blocks": 5, "freed": {"expired": 1, "nacked:integrity": 1},
                            "freed_blocks": {"expired": 4, "nacked:integrity": 2},
                            "pulls": {"outcomes": {"ok": 3, "deadline": 1}, "bytes": 4096, "recent_ms": [2.0, 7.5]}})
    text = m.exposition().decode()
    assert 'hfx_worker_kv_leased_blocks{instance="kvw"} 5.0' in text
    assert 'hfx_worker_kv_leaked_blocks{instance="kvw"} 4.0' in text  # the expired transfers' blocks only
    assert 'hfx_worker_kv_freed_transfers{instance="kvw",reason="expired"} 1.0' in text
    assert 'hfx_worker_kv_pulls{instance="kvw",outcome="deadline"} 1.0' in text
    assert 'hfx_worker_kv_last_pull_ms{instance="kvw"} 7.5' in text


def test_each_kv_pull_is_observed_in_the_duration_histogram_by_outcome():
    metrics.observe_kv_pull("kvh", {"outcome": "ok", "ms": 3.0})
    metrics.observe_kv_pull("kvh", {"outcome": "ok", "ms": 40.0})
    metrics.observe_kv_pull("kvh", {"outcome": "deadline", "ms": 10_000.0})
    assert sample("hfx_worker_kv_pull_seconds_count", instance="kvh", outcome="ok") == 2
    assert sample("hfx_worker_kv_pull_seconds_sum", instance="kvh", outcome="ok") == pytest.approx(0.043)
    assert sample("hfx_worker_kv_pull_seconds_bucket", instance="kvh", outcome="ok", le="0.005") == 1
    assert sample("hfx_worker_kv_pull_seconds_bucket", instance="kvh", outcome="ok", le="0.05") == 2
    assert sample("hfx_worker_kv_pull_seconds_bucket", instance="kvh", outcome="deadline", le="5.0") == 0
    assert sample("hfx_worker_kv_pull_seconds_bucket", instance="kvh", outcome="deadline", le="10.0") == 1
