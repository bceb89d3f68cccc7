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

Not fixed here: vLLM still matches a request's stop strings against its own text, so such a
request may stop on a stop string that is in its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
