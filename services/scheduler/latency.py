"""Fitting the step-time model step_ms = c0 + c1*prefill_tokens + c2*decode_seqs + c3*kv_tokens.

Pure: `fit` solves least squares over profiled steps and reports its error; `OnlineLatencyModel`
calibrates a fitted model by the steps a worker reports (a scale factor for its decode part and
one for its prefill term, with forgetting, so the model follows drift such as thermal throttling
or a noisy neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.common.domain import LatencyModel, StepSample


@dataclass(frozen=True)
class Fit:
    model: LatencyModel
    r2: float
    mape: float          # mean absolute percentage error, as a fraction (0.05 = 5%)
    samples: int


def _features(samples: Sequence[StepSample]) -> np.ndarray:
    return np.array([[1.0, s.prefill_tokens, s.decode_seqs, s.kv_tokens] for s in samples], dtype=float)


def _model(coef: np.ndarray) -> LatencyModel:
    # Negative coefficients are fitting noise (a step never gets faster with more work).
    c = np.maximum(coef, 0.0)
    return LatencyModel(float(c[0]), float(c[1]), float(c[2]), float(c[3]))


def error(model: LatencyModel, samples: Sequence[StepSample]) -> tuple[float, float]:
    """(R^2, MAPE) of a model over samples."""
    y = np.array([s.step_ms for s in samples], dtype=float)
    pred = np.array([model.step_ms(s.prefill_tokens, s.decode_seqs, s.kv_tokens) for s in samples])
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    mape = float(np.mean(np.abs(y - pred) / np.maximum(np.abs(y), 1e-9)))
    return r2, mape


def fit(samples: Sequence[StepSample]) -> Fit:
    if len(samples) < 4:
        raise ValueError(f"need at least 4 step samples to fit 4 coefficients, got {len(samples)}")
    x = _features(samples)
    y = np.array([s.step_ms for s in samples], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    model = _model(coef)
    r2, mape = error(model, samples)
    return Fit(model, r2, mape, len(samples))


class OnlineLatencyModel:
    """Calibrates a profiled model online by two factors: step_ms ~= kd * decode_part + kp * c1*p,
    where decode_part = c0 + c2*n + c3*kv of the profile and c1*p its prefill term.

    Each factor is the exponentially weighted geometric mean of observed / predicted ratios
    (`forgetting` 0.995: the last ~200 steps), each ratio clipped to [min_scale, max_scale]. Steps
    without prefill tokens calibrate kd (step / decode_part); a step with prefill tokens calibrates
    kp by what is left of it after the decode part at kd ((step - kd*decode_part) / (c1*p)) when
    the prefill term is the larger part of its prediction, else kd by what the prefill term at kp
    leaves of it ((step - kp*c1*p) / decode_part). The profile fixes the shape within each term;
    live steps say how much slower or faster the instance runs now (a noisy neighbour, CPU
    contention, throttling).

    Why two: a quick start-up profile taken under contention gets the prefill coefficient wrong
    by 3-5x (issue 9, seventh session: two identical engines' profiles had c1 0.006 and 0.032
    ms/token, R^2 0.54-0.59). With one factor every prefill step then pulled the whole model,
    intercept included, 2-3x up: c0 read 8-11.6 ms against decode steps the peer's engines ran in
    under 9.3 ms, so every request with a 10.1 ms TPOT was taken for "below one decode step" and
    refused. A free refit of all four coefficients (recursive least squares, the first version)
    was unstable on live vLLM steps: under load they all have similar composition, so the
    intercept and the per-sequence terms trade off, and clamping the negative one produced models
    like 28.7 + 4.09*decode_seqs ms against real steps of ~8 ms (docs/LIVE.md), which made HFX
    turn requests away.
    """

    def __init__(self, start: LatencyModel, forgetting: float = 0.995,
                 min_scale: float = 0.25, max_scale: float = 8.0) -> None:
        self.start = start
        self.forgetting = forgetting
        self._clip = (float(np.log(min_scale)), float(np.log(max_scale)))
        self._decode = _Factor()
        self._prefill = _Factor()
        self.steps = 0

    def observe(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, step_ms: float) -> None:
        m = self.start
        decode_ms = m.c0_ms + m.c2_ms_per_decode_seq * decode_seqs + m.c3_ms_per_kv_token * kv_tokens
        prefill_ms = m.c1_ms_per_prefill_token * prefill_tokens
        if decode_ms + prefill_ms <= 0 or step_ms <= 0:
            return
        # The step calibrates the term that holds most of its prediction, by what the other term
        # (at its own factor) leaves of the step. Charging every step with any prefill to kp made
        # a step of a few prompt tokens beside a batch of decodes (a P/D leg's one recomputed
        # token on D, a 10-token prompt) decide kp by noise: (step - kd*decode) / (c1*1 token).
        if prefill_ms > decode_ms:
            factor, ratio = self._prefill, (step_ms - self.scale * decode_ms) / prefill_ms
        else:
            factor, ratio = self._decode, (step_ms - self.prefill_scale * prefill_ms) / decode_ms
        low, high = self._clip
        factor.add(min(max(float(np.log(max(ratio, 1e-9))), low), high), self.forgetting)
        self.steps += 1

    @property
    def scale(self) -> float:
        """kd: how much slower (> 1) or faster the decode part runs than profiled."""
        return self._decode.value()

    @property
    def prefill_scale(self) -> float:
        """kp: the same for the prefill term (c1)."""
        return self._prefill.value()

    @property
    def model(self) -> LatencyModel:
        kd, kp, m = self.scale, self.prefill_scale, self.start
        # The KV transfer is the link's, not the engine's steps': it is not scaled with them.
        return LatencyModel(m.c0_ms * kd, m.c1_ms_per_prefill_token * kp, m.c2_ms_per_decode_seq * kd,
                            m.c3_ms_per_kv_token * kd, m.kv_transfer_ms_per_token)


class _Factor:
    """An exponentially weighted geometric mean of ratios (given as logs); 1 before any."""

    def __init__(self) -> None:
        self._log_sum = 0.0
        self._weight = 0.0

    def add(self, log_ratio: float, forgetting: float) -> None:
        self._log_sum = forgetting * self._log_sum + log_ratio
        self._weight = forgetting * self._weight + 1.0

    def value(self) -> float:
        return float(np.exp(self._log_sum / self._weight)) if self._weight else 1.0
