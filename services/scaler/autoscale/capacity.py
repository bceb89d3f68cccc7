"""How many requests/s an instance carries within the SLOs.

`slo_capacity_rps` is the profile-based figure (used by HFX and by the throughput-planner
baseline alike): the largest decode batch whose steady step leaves `step_share` of the tightest
TPOT SLO (the rest is room for prefill chunks interleaved with the decodes), then the request
rate that batch sustains once each request's prefill is paid for:
  per second, 1000 ms = rps * (O * (c0/B + c2 + c3*kv) + c1 * L)   (B decodes share each step)
with L, O the mean prompt and output lengths and kv = L + O/2 the mean KV a decoding request holds.
`estimate_capacity` is what the policy believes per instance on a tick: the median of warmed-up
instances' samples, never a warming one's (its early steps are slow and would read as low
capacity, which over-scales).
"""

from __future__ import annotations

import statistics

from services.common.domain import LatencyModel
from services.scaler.autoscale.signals import InstanceSignal, Phase


def slo_capacity_rps(model: LatencyModel, mean_prompt_tokens: float, mean_output_tokens: float,
                     tpot_slo_ms: float, kv_capacity_tokens: int, max_num_seqs: int,
                     step_share: float = 0.7) -> float:
    if mean_output_tokens <= 0 or mean_prompt_tokens < 0 or tpot_slo_ms <= 0:
        raise ValueError(f"need mean output > 0, mean prompt >= 0, TPOT SLO > 0; got {mean_output_tokens}, "
                         f"{mean_prompt_tokens}, {tpot_slo_ms}")
    batch, per_seq_ms = _decode_batch(model, mean_prompt_tokens, mean_output_tokens, tpot_slo_ms, kv_capacity_tokens,
                                      max_num_seqs, step_share)
    per_request_ms = (mean_output_tokens * (model.c0_ms / batch + per_seq_ms)
                      + model.c1_ms_per_prefill_token * mean_prompt_tokens)
    return 1000.0 / per_request_ms


def warmed_up(inst: InstanceSignal, now_s: float, warmup_s: float) -> bool:
    return inst.phase is Phase.READY and now_s - inst.since_s >= warmup_s


def estimate_capacity(instances: tuple[InstanceSignal, ...] | list[InstanceSignal], device: str, now_s: float,
                      warmup_s: float, fallback_rps: float) -> tuple[float, int]:
    """(req/s per instance of `device`, how many samples it rests on; 0 = the fallback)."""
    samples = [i.capacity_rps for i in instances
               if i.device == device and i.capacity_rps is not None and i.capacity_rps > 0
               and warmed_up(i, now_s, warmup_s)]
    if not samples:
        return fallback_rps, 0
    return statistics.median(samples), len(samples)


def pd_tokens_per_s(model: LatencyModel, chunk_tokens: int, mean_prompt_tokens: float, mean_output_tokens: float,
                    tpot_slo_ms: float, kv_capacity_tokens: int, max_num_seqs: int,
                    step_share: float = 0.7) -> tuple[float, float]:
    """(prompt tokens/s one prefill instance processes, output tokens/s one decode instance
    sustains within the TPOT SLO) from a latency model, the figures PDConfig wants.
    Prefill: full chunks back to back, `step_share` of the time (the rest: room for the queue to
    drain within the TTFT SLOs). Decode: the largest batch whose step leaves `step_share` of the
    TPOT SLO, each sequence one token per step (as slo_capacity_rps sizes it)."""
    if chunk_tokens <= 0 or mean_output_tokens <= 0 or mean_prompt_tokens < 0 or tpot_slo_ms <= 0:
        raise ValueError(f"need chunk > 0, mean output > 0, mean prompt >= 0, TPOT SLO > 0; got {chunk_tokens}, "
                         f"{mean_output_tokens}, {mean_prompt_tokens}, {tpot_slo_ms}")
    prefill = step_share * 1000.0 * chunk_tokens / (model.c0_ms + model.c1_ms_per_prefill_token * chunk_tokens)
    batch, per_seq_ms = _decode_batch(model, mean_prompt_tokens, mean_output_tokens, tpot_slo_ms, kv_capacity_tokens,
                                      max_num_seqs, step_share)
    decode = 1000.0 * batch / (model.c0_ms + batch * per_seq_ms)
    return prefill, decode


def _decode_batch(model: LatencyModel, mean_prompt_tokens: float, mean_output_tokens: float, tpot_slo_ms: float,
                  kv_capacity_tokens: int, max_num_seqs: int, step_share: float) -> tuple[int, float]:
    """(the largest decode batch whose steady step leaves `step_share` of the TPOT SLO and fits
    the KV cache, ms each sequence adds to a step)."""
    kv_per_seq = mean_prompt_tokens + mean_output_tokens / 2
    per_seq_ms = model.c2_ms_per_decode_seq + model.c3_ms_per_kv_token * kv_per_seq
    room_ms = tpot_slo_ms * step_share - model.c0_ms
    batch = int(room_ms // per_seq_ms) if per_seq_ms > 0 else max_num_seqs
    kv_room = int(kv_capacity_tokens // max(1.0, mean_prompt_tokens + mean_output_tokens))
    return max(1, min(batch, max_num_seqs, kv_room)), per_seq_ms
