"""Fitting the step-time model and refining it online."""

from __future__ import annotations

import random

import pytest

from services.common.domain import LatencyModel
from services.scheduler.latency import OnlineLatencyModel, StepSample, error, fit

TRUE = LatencyModel(3.0, 0.02, 0.15, 0.0005)


def profile_grid(model: LatencyModel, noise: float = 0.0, seed: int = 0) -> list[StepSample]:
    rng = random.Random(seed)
    out = []
    for p in (0, 128, 512, 1024):
        for n in (0, 1, 8, 32):
            for kv in (0, 4096, 32768):
                if p == 0 and n == 0:
                    continue
                out.append(StepSample(p, n, kv, model.step_ms(p, n, kv) * (1 + rng.gauss(0, noise))))
    return out


def test_fit_recovers_exact_model():
    result = fit(profile_grid(TRUE))
    assert result.model.c0_ms == pytest.approx(3.0, rel=1e-6)
    assert result.model.c1_ms_per_prefill_token == pytest.approx(0.02, rel=1e-6)
    assert result.model.c3_ms_per_kv_token == pytest.approx(0.0005, rel=1e-6)
    assert result.r2 == pytest.approx(1.0) and result.mape < 1e-9


def test_fit_reports_error_on_noisy_samples():
    result = fit(profile_grid(TRUE, noise=0.05, seed=3))
    assert 0.9 < result.r2 < 1.0 and 0.01 < result.mape < 0.1
    assert error(result.model, profile_grid(TRUE))[0] > 0.95


def test_fit_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 4"):
        fit([StepSample(1, 1, 1, 1.0)])


def test_online_model_follows_a_slowdown():
    online = OnlineLatencyModel(TRUE, forgetting=0.98)
    slower = LatencyModel(6.0, 0.04, 0.3, 0.001)   # e.g. a noisy neighbour halves the speed
    for _ in range(20):
        for s in profile_grid(slower):
            online.observe(s.prefill_tokens, s.decode_seqs, s.kv_tokens, s.step_ms)
    assert online.model.step_ms(512, 8, 4096) == pytest.approx(slower.step_ms(512, 8, 4096), rel=0.05)
    assert online.steps == 20 * len(profile_grid(slower))


def test_online_model_keeps_the_profiled_shape_when_live_steps_all_look_alike():
    """Under load every step has about the same composition, which cannot separate c0 from c2;
    the calibration only scales the profile, so the prediction for a lone request stays sane, and
    one wild step (a 100x stall, clipped to 8x) moves the scale by a few percent, not 100x."""
    online = OnlineLatencyModel(TRUE)
    for i in range(400):
        online.observe(0, 20, 10_000, 1.5 * TRUE.step_ms(0, 20, 10_000) * (1.1 if i % 2 else 0.9))
    assert online.scale == pytest.approx(1.5, rel=0.02)
    assert online.model.step_ms(0, 1, 0) == pytest.approx(1.5 * TRUE.step_ms(0, 1, 0), rel=0.02)
    before = online.scale
    online.observe(0, 20, 10_000, 100 * TRUE.step_ms(0, 20, 10_000))
    assert before < online.scale < before * 1.02


def test_a_wrong_prefill_coefficient_does_not_inflate_the_decode_step():
    """A start-up profile taken under contention got c1 5x too small (issue 9, seventh session).
    Live steps: decodes run 1.2x the profile, prefills 5x its c1. The decode step the model
    predicts (what decides whether a tight TPOT can be met at all) must follow the decodes, and
    a prefill's prediction the prefills, rather than one factor between them for both."""
    profiled = LatencyModel(4.0, 0.006, 0.05, 0.0004)
    decode = lambda n, kv: 1.2 * (4.0 + 0.05 * n + 0.0004 * kv)   # noqa: E731
    rng = random.Random(1)
    online = OnlineLatencyModel(profiled)
    for i in range(600):
        n, kv = rng.randint(1, 12), rng.randint(500, 8000)
        p = rng.choice((256, 512, 2048)) if i % 5 == 0 else 0
        online.observe(p, n, kv, (decode(n, kv) + 0.03 * p) * rng.uniform(0.9, 1.1))
    assert online.scale == pytest.approx(1.2, rel=0.05)
    assert online.model.step_ms(0, 1, 1000) == pytest.approx(decode(1, 1000), rel=0.05)
    assert online.model.step_ms(512, 4, 2000) == pytest.approx(decode(4, 2000) + 0.03 * 512, rel=0.1)


def test_prefill_steps_alone_calibrate_the_prefill_term_and_leave_the_decode_part():
    online = OnlineLatencyModel(TRUE)
    for _ in range(200):
        online.observe(1024, 0, 0, TRUE.c0_ms + 3 * TRUE.c1_ms_per_prefill_token * 1024)
    assert online.scale == 1.0
    assert online.prefill_scale == pytest.approx(3.0, rel=0.01)
