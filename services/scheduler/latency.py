"""Fitting the step-time model step_ms = c0 + c1*prefill_tokens + c2*decode_seqs + c3*kv_tokens.

Pure: `fit` solves least squares over profiled steps and reports its error; `OnlineLatencyModel`
calibrates a fitted model by the steps a worker reports (one scale factor with forgetting, so
the model follows drift such as thermal throttling or a noisy neighbour).
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
    """Calibrates a profiled model online by one factor: step_ms ~= scale * profile(step).

    `scale` is the exponentially weighted geometric mean of observed / predicted step times
    (`forgetting` 0.995: the last ~200 steps), each ratio clipped to [min_scale, max_scale].
    The profile fixes the model's shape; live steps only say how much slower or faster the
    instance runs now (a noisy neighbour, CPU contention, throttling). A free refit of all four
    coefficients (recursive least squares, the first version) was unstable on live vLLM steps:
    under load they all have similar composition, so the intercept and the per-sequence terms
    trade off, and clamping the negative one produced models like 28.7 + 4.09*decode_seqs ms
    against real steps of ~8 ms (docs/LIVE.md), which made HFX turn requests away.
    """

    def __init__(self, start: LatencyModel, forgetting: float = 0.995,
                 min_scale: float = 0.25, max_scale: float = 8.0) -> None:
        self.start = start
        self.forgetting = forgetting
        self._clip = (float(np.log(min_scale)), float(np.log(max_scale)))
        self._log_sum = 0.0
        self._weight = 0.0
        self.steps = 0

    def observe(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, step_ms: float) -> None:
        predicted = self.start.step_ms(prefill_tokens, decode_seqs, kv_tokens)
        if predicted <= 0 or step_ms <= 0:
            return
        ratio = min(max(float(np.log(step_ms / predicted)), self._clip[0]), self._clip[1])
        self._log_sum = self.forgetting * self._log_sum + ratio
        self._weight = self.forgetting * self._weight + 1.0
        self.steps += 1

    @property
    def scale(self) -> float:
        return float(np.exp(self._log_sum / self._weight)) if self._weight else 1.0

    @property
    def model(self) -> LatencyModel:
        k, m = self.scale, self.start
        # The KV transfer is the link's, not the engine's steps': it is not scaled with them.
        return LatencyModel(m.c0_ms * k, m.c1_ms_per_prefill_token * k, m.c2_ms_per_decode_seq * k,
                            m.c3_ms_per_kv_token * k, m.kv_transfer_ms_per_token)
