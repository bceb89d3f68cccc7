"""Fitting the step-time model step_ms = c0 + c1*prefill_tokens + c2*decode_seqs + c3*kv_tokens.

Pure: `fit` solves least squares over profiled steps and reports its error; `OnlineLatencyModel`
refines a fitted model from the steps a worker reports (recursive least squares with forgetting,
so the model follows drift such as thermal throttling or a noisy neighbour).
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
    """Recursive least squares from a starting model; `forgetting` < 1 weights recent steps more.

    The features differ by orders of magnitude (1 vs thousands of KV tokens), so the update runs
    on scaled features to keep the covariance well conditioned.
    """

    def __init__(self, start: LatencyModel, forgetting: float = 0.995, prior_variance: float = 1.0,
                 scale: tuple[float, float, float, float] = (1.0, 512.0, 64.0, 65536.0)) -> None:
        self.forgetting = forgetting
        self._scale = np.array(scale, dtype=float)
        self._theta = np.array([start.c0_ms, start.c1_ms_per_prefill_token, start.c2_ms_per_decode_seq,
                                start.c3_ms_per_kv_token]) * self._scale
        self._p = np.eye(4) * prior_variance
        self.steps = 0

    def observe(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, step_ms: float) -> None:
        x = np.array([1.0, prefill_tokens, decode_seqs, kv_tokens]) / self._scale
        px = self._p @ x
        gain = px / (self.forgetting + x @ px)
        self._theta = self._theta + gain * (step_ms - x @ self._theta)
        self._p = (self._p - np.outer(gain, px)) / self.forgetting
        self.steps += 1

    @property
    def model(self) -> LatencyModel:
        return _model(self._theta / self._scale)
