"""A prompt that ends part-way through a character (a P/D decode leg whose prompt ends with P's
first token, a byte of a character): the worker's text for it is what a colocated run streams,
not the prompt echoed (services/worker/engine/prompt_tail.py)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from services.common.model import ensure_default_model
from services.worker.engine import prompt_tail


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(ensure_default_model() / "tokenizer.json"))


def prompt(tok: Tokenizer) -> list[int]:
    return tok.encode("Go on: " + " ".join(f"w{i * 7 % 97}" for i in range(40))).ids


def a_byte_token(tok: Tokenizer) -> int:
    """A token that is one byte of a multi-byte character: alone it decodes unfinished."""
    return next(i for i in range(tok.get_vocab_size()) if tok.decode([i]) == prompt_tail.UNFINISHED)


def colocated_deltas(tok: Tokenizer, ids: list[int], out: list[int]) -> list[str]:
    stream = DecodeStream(ids=ids, skip_special_tokens=True)
    return [stream.step(tok, t) or "" for t in out]


def test_vllms_priming_of_a_prompt_ending_mid_character_echoes_the_prompt(tok):
    """Why the module exists: DecodeStream primed as vLLM primes it (the whole prompt)."""
    ids, byte, word = prompt(tok), a_byte_token(tok), tok.encode(" rivers", add_special_tokens=False).ids
    first = DecodeStream(ids=ids + [byte], skip_special_tokens=True).step(tok, word[0])
    assert first is not None and "Go on: w0" in first


def test_a_decode_legs_text_is_the_colocated_runs_text(tok):
    ids, byte = prompt(tok), a_byte_token(tok)
    out = tok.encode(" rivers round the hill", add_special_tokens=False).ids
    colocated = colocated_deltas(tok, ids, [byte] + out)
    assert colocated[0] == ""  # P's leg: the byte's text waits for the character's end
    text = prompt_tail.tail_text(tok, ids + [byte])  # D's leg: the prompt carries P's byte
    assert text is not None
    assert [text.delta([t]) for t in out] == colocated[1:]
    assert colocated[1].startswith(prompt_tail.UNFINISHED)  # the unfinished byte, then " rivers"


def test_a_prompt_ending_on_a_whole_character_keeps_vllms_text(tok):
    ids = prompt(tok)
    assert prompt_tail.unfinished_tail(tok, ids) == 0
    assert prompt_tail.tail_text(tok, ids) is None
    assert prompt_tail.tail_text(None, ids + [a_byte_token(tok)]) is None  # no fast tokenizer: vLLM's text
    assert prompt_tail.unfinished_tail(tok, ids + [a_byte_token(tok)] * 2) == 2


def feed_all(stop: prompt_tail.TailStop, deltas: list[str]) -> tuple[list[str], bool]:
    sent = []
    for i, delta in enumerate(deltas):
        text, stopped = stop.feed(delta, finished=i == len(deltas) - 1)
        sent.append(text)
        if stopped:
            return sent, True
    return sent, False


def test_tail_stop_cuts_before_the_first_stop_string_even_across_deltas():
    assert feed_all(prompt_tail.TailStop(["END"]), ["a b E", "N", "D c"]) == (["a b", " ", ""], True)
    assert feed_all(prompt_tail.TailStop(["xyz", "b"]), ["a xy", "z b"]) == (["a ", ""], True)  # the earliest
    assert feed_all(prompt_tail.TailStop(["\n"]), ["one", " two\nthree"]) == (["one", " two"], True)


def test_tail_stop_holds_back_the_longest_stop_string_less_one_character_as_vllm_does_and_flushes_at_the_end():
    assert feed_all(prompt_tail.TailStop(["END"]), ["a b E", "Nd", " c"]) == (["a b", " E", "Nd c"], False)
    assert feed_all(prompt_tail.TailStop(["", "z"]), ["ab", "c"]) == (["ab", "c"], False)  # "" stops nothing


def test_tail_output_ends_the_request_on_its_own_text_not_on_the_prompt(tok):
    """vLLM matched stop strings over its text, which for such a prompt starts with the prompt."""
    from services.common.domain import FinishReason
    from services.worker.engine.base import EngineOutput

    ids, byte = prompt(tok), a_byte_token(tok)
    words = tok.encode(" rivers round the hill", add_special_tokens=False).ids
    text = prompt_tail.tail_text(tok, ids + [byte])
    assert text is not None
    stop = prompt_tail.TailStop(["Go on", " round"])  # "Go on" is in the prompt only
    outs = [prompt_tail.tail_output(EngineOutput([t], "vLLM's text", False, None, len(ids) + 1), text, stop)
            for t in words]
    first_stop = next(i for i, o in enumerate(outs) if o.finished)
    assert "".join(o.text_delta for o in outs[:first_stop + 1]) == colocated_deltas(tok, ids, [byte, words[0]])[1]
    assert outs[first_stop].finish_reason is FinishReason.STOP and outs[first_stop].kv is None
    assert all(not o.finished and o.finish_reason is None for o in outs[:first_stop])
