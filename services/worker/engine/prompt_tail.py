"""The text of a request whose prompt ends part-way through a character.

vLLM's detokenizer primes a `tokenizers.decoders.DecodeStream` with the whole prompt. When the
prompt ends inside a multi-byte character (its last tokens are bytes of a character not finished
yet), that stream's first step returns the text of the whole prompt (tokenizers 0.23): the
client would get its prompt back as output. HFX makes such prompts itself: a P/D decode leg's
prompt ends with P's first token, and a request resumed after preemption or failover carries the
tokens it already streamed; a byte-level token there (P's first token of a chat prompt, seen in
test_pd_live) made D echo the prompt. For those requests the worker makes the text itself: a
stream primed with the prompt up to its last whole character, stepped over the rest of the
prompt (whose text the earlier leg held back as unfinished), then over each output token. That
gives each delta the text a colocated run gives it.

vLLM matches a request's stop strings against its own text, which for these requests starts with
the prompt: a stop string anywhere in the prompt (a newline, say) would end the request at its
first token. So for them the worker matches the stop strings itself (`TailStop`), over its own
text, as vLLM does over a colocated run's, and vLLM is given none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from services.common.domain import FinishReason
from services.worker.engine.base import EngineOutput

UNFINISHED = "\ufffd"  # what a decode of bytes that end mid-character ends with
MAX_HELD = 4           # a character is at most 4 bytes, so at most 4 byte tokens
WINDOW = 8             # tokens decoded to look at the prompt's end


def unfinished_tail(tokenizer: Any, prompt: Sequence[int]) -> int:
    """How many of the prompt's last tokens belong to a character it does not finish (0: none)."""
    for held in range(0, min(MAX_HELD, len(prompt) - 1) + 1):
        end = len(prompt) - held
        if not tokenizer.decode(list(prompt[max(0, end - WINDOW):end]), skip_special_tokens=False).endswith(UNFINISHED):
            return held
    return 0  # not a character split by the prompt's end (e.g. U+FFFD in the text itself): vLLM's text


class TailText:
    """Text deltas of a request's output tokens when its prompt ends `held` tokens into a character."""

    def __init__(self, tokenizer: Any, prompt: Sequence[int], held: int, skip_special_tokens: bool = True) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(ids=list(prompt[:len(prompt) - held]), skip_special_tokens=skip_special_tokens)
        for token in prompt[len(prompt) - held:]:
            self._stream.step(tokenizer, token)  # unfinished: their text comes with the next token

    def delta(self, token_ids: Sequence[int]) -> str:
        return "".join(self._stream.step(self._tokenizer, token) or "" for token in token_ids)


def tail_text(tokenizer: Any, prompt: Sequence[int], skip_special_tokens: bool = True) -> TailText | None:
    """A TailText for a prompt that ends part-way through a character, else None (vLLM's text is right).
    `tokenizer`: a `tokenizers.Tokenizer` (a fast tokenizer's backend); None: no tokenizer to do it with."""
    if tokenizer is None or not prompt:
        return None
    held = unfinished_tail(tokenizer, prompt)
    return TailText(tokenizer, prompt, held, skip_special_tokens) if held else None


class TailStop:
    """Stop strings matched over TailText's deltas the way vLLM matches them over its own text:
    the first stop string ends the request, its text cut just before it (not included), and the
    last (longest stop string - 1) characters are held back until more text comes or the request
    ends, as vLLM holds them (they may begin a stop string). vLLM's `include_stop_str_in_output` is
    not an HFX sampling option, so not here either."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""  # text held back

    def feed(self, delta: str, finished: bool) -> tuple[str, bool]:
        """(the text to send now, whether a stop string ended the request here)."""
        text = self._pending + delta
        found = [at for at in (text.find(s) for s in self._stops) if at >= 0]
        if found:
            self._pending = ""
            return text[:min(found)], True
        keep = 0 if finished else min(self._hold, len(text))
        self._pending = text[len(text) - keep:]
        return text[:len(text) - keep], False


def tail_output(output: EngineOutput, text: TailText, stop: TailStop | None) -> EngineOutput:
    """`output` with the worker's own text, and its own stop-string match, for such a prompt. A stop
    string ends it as vLLM would (finish reason stop); the caller then aborts the request in vLLM."""
    delta = text.delta(output.new_token_ids)
    if stop is None:
        return dataclasses.replace(output, text_delta=delta)
    delta, stopped = stop.feed(delta, output.finished)
    if stopped:
        return dataclasses.replace(output, text_delta=delta, finished=True, finish_reason=FinishReason.STOP, kv=None)
    return dataclasses.replace(output, text_delta=delta)
