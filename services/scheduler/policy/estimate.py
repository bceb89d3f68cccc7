"""Output-length estimates per task class, learned online from completions."""

from __future__ import annotations

from services.common.domain import RequestSpec


class OutputLengthEstimator:
    """EWMA of observed output tokens per task class, capped by each request's max_tokens.

    A request's max_tokens is only an upper bound (most stop at EOS far earlier), so planning on
    it would over-reserve KV and overstate how much decode slack a request banks.
    """

    def __init__(self, prior_tokens: int, alpha: float = 0.05) -> None:
        self.prior_tokens = prior_tokens
        self.alpha = alpha
        self._mean_tokens: dict[str, float] = {}

    def observe(self, task_class: str, output_tokens: int) -> None:
        old = self._mean_tokens.get(task_class)
        self._mean_tokens[task_class] = (
            float(output_tokens) if old is None else old + self.alpha * (output_tokens - old)
        )

    def mean_tokens(self, task_class: str) -> float:
        return self._mean_tokens.get(task_class, float(self.prior_tokens))

    def estimate(self, spec: RequestSpec) -> int:
        return max(1, min(spec.max_tokens, round(self.mean_tokens(spec.task_class))))
