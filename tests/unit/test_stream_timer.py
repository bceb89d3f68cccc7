from services.common.domain import Slo
from services.router.metrics import StreamTimer


def test_ttft_and_mean_tpot_over_the_decode_phase():
    t = StreamTimer(arrival_s=10.0)
    t.on_tokens(1, 10.25)   # first token at 250 ms
    t.on_tokens(2, 10.375)  # tokens 2-3
    t.on_tokens(1, 10.625)  # token 4: decode phase 375 ms for 3 tokens
    assert t.ttft_ms == 250.0
    assert t.tpot_ms == 125.0
    assert t.slo_met(Slo(ttft_ms=250, tpot_ms=125))
    assert not t.slo_met(Slo(ttft_ms=249, tpot_ms=125))
    assert not t.slo_met(Slo(ttft_ms=250, tpot_ms=124))


def test_no_tokens_misses_and_one_token_has_no_tpot():
    t = StreamTimer(arrival_s=0.0)
    assert not t.slo_met(Slo(1e9, 1e9)) and t.ttft_ms == 0.0
    t.on_tokens(1, 0.05)
    assert t.tpot_ms == 0.0 and t.slo_met(Slo(50, 1))
