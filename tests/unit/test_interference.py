"""The worker's prefill ledger (services/worker/interference.py), worked by hand."""

from services.worker.interference import PrefillLedger


def test_a_request_behind_a_long_prefill_sees_it_before_its_first_token():
    ledger = PrefillLedger()
    ledger.started("long", 1900, 0.0)
    ledger.started("short", 10, 0.2)        # arrives while long's prefill runs
    ledger.first_token("long", 2.0)
    ledger.first_token("short", 2.1)
    seen = ledger.ended("short", 2.5)
    assert round(seen.before_first_ms, 6) == 1800.0 and seen.before_first_tokens == 1900
    assert seen.during_decode_ms == 0.0 and seen.requests == ("long",)
    # long's own view: short waited behind it (started later, first token later), so it did not
    # delay long's first token; its prefill (0.2..2.1) did share long's decode from 2.0 to 2.1.
    seen = ledger.ended("long", 3.0)
    assert seen.before_first_ms == 0.0 and round(seen.during_decode_ms, 6) == 100.0


def test_a_later_prefill_that_finishes_first_counts_before_the_first_token():
    ledger = PrefillLedger()
    ledger.started("r", 3000, 0.0)
    ledger.started("q", 50, 0.5)       # shorter, overtakes r (chunked prefill shares the steps)
    ledger.first_token("q", 0.8)
    ledger.first_token("r", 3.0)
    seen = ledger.ended("r", 3.5)
    assert round(seen.before_first_ms, 6) == 300.0 and seen.requests == ("q",)


def test_prefills_during_decode_are_a_union_not_a_sum():
    ledger = PrefillLedger()
    ledger.started("r", 10, 0.0)
    ledger.first_token("r", 0.1)
    for rid, start, first in (("a", 1.0, 2.0), ("b", 1.5, 2.5), ("c", 4.0, 4.5)):
        ledger.started(rid, 100, start)
        ledger.first_token(rid, first)
    seen = ledger.ended("r", 5.0)
    assert round(seen.during_decode_ms, 6) == 2000.0   # 1.0..2.5 and 4.0..4.5
    assert seen.during_decode_tokens == 300 and seen.requests == ("a", "b", "c")
    assert seen.before_first_ms == 0.0


def test_ended_requests_are_forgotten_once_nothing_live_overlaps_them():
    ledger = PrefillLedger()
    ledger.started("a", 5, 0.0)
    ledger.ended("a", 1.0)
    ledger.started("b", 5, 2.0)   # prunes a: it ended before b (the oldest live request) began
    assert len(ledger) == 1
    assert ledger.ended("unknown", 3.0).requests == ()
