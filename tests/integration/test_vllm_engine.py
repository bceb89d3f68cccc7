"""VllmEngine on the tiny model: same greedy tokens as vLLM offline, aborts, live stats.

One engine per module (start-up costs tens of seconds on CPU); the offline reference runs in a
subprocess meanwhile, because two vLLM engines in one process share global state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from services.common.domain import FinishReason, Sampling
from services.common.model import ensure_default_model
from services.worker.engine import make_engine
from services.worker.engine.base import EngineRequest
from services.worker.engine.vllm_engine import VllmEngineConfig

pytestmark = pytest.mark.slow

PROMPT_TOKEN_IDS = [1, 43, 343, 1515, 1196, 15, 262, 1294]
GREEDY_TOKENS = 16
START_TIMEOUT_S = 240.0
CALL_TIMEOUT_S = 60.0

_OFFLINE_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

def main():
    model, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model=model, seed=0, enforce_eager=True, kv_cache_memory_bytes=256 * 1024 * 1024,
              max_num_seqs=64, disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    print("RESULT " + json.dumps(list(out.outputs[0].token_ids)), flush=True)

if __name__ == "__main__":
    main()
"""


class _LoopThread:
    """An event loop on its own thread, so one engine can serve every test in the module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout_s: float = CALL_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_default_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def offline_reference(model_dir):
    """Started before the engine so the two start-ups overlap; the test collects the result."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(model_dir), json.dumps(PROMPT_TOKEN_IDS), str(GREEDY_TOKENS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def engine(model_dir, offline_reference):
    loop = _LoopThread()
    eng = make_engine("vllm", VllmEngineConfig(model=str(model_dir)))
    started = time.monotonic()
    loop.run(eng.start(), timeout_s=START_TIMEOUT_S)
    print(f"engine start {time.monotonic() - started:.1f}s")
    yield eng, loop
    loop.run(eng.shutdown())
    loop.close()


def _request(request_id: str, max_tokens: int, priority: int = 1) -> EngineRequest:
    return EngineRequest(
        request_id=request_id, prompt_token_ids=list(PROMPT_TOKEN_IDS),
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), priority=priority,
    )


async def _collect(eng, req):
    return [out async for out in eng.generate(req)]


def test_an_engines_first_step_of_one_token_is_served(engine):
    """First in this module on purpose: the engine's very first step has one token. On a CPU with
    AMX, vLLM's attention used AMX tiles the process had not asked for, and the model worker died
    of SIGILL (device.allow_amx, run by vLLM as HFX's general plugin, asks at start)."""
    eng, loop = engine
    req = EngineRequest(request_id="one-token-first", prompt_token_ids=PROMPT_TOKEN_IDS[:1],
                        sampling=Sampling(max_tokens=4, temperature=0.0, ignore_eos=True), priority=1)
    outputs = loop.run(_collect(eng, req))
    assert sum(len(o.new_token_ids) for o in outputs) == 4
    assert eng.failure() is None


def test_greedy_tokens_match_offline_vllm(engine, offline_reference):
    eng, loop = engine
    outputs = loop.run(_collect(eng, _request("greedy", GREEDY_TOKENS)))
    stdout, stderr = offline_reference.communicate(timeout=START_TIMEOUT_S)
    assert offline_reference.returncode == 0, stderr[-3000:]
    expected = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])

    tokens = [t for out in outputs for t in out.new_token_ids]
    assert tokens == expected
    assert len(set(tokens)) > 1  # the tiny model does not just repeat one token
    assert outputs[-1].finished and outputs[-1].finish_reason is FinishReason.LENGTH
    assert all(not out.finished for out in outputs[:-1])
    assert outputs[0].prompt_tokens == len(PROMPT_TOKEN_IDS)


def test_abort_mid_stream_ends_the_stream(engine):
    eng, loop = engine

    async def scenario():
        outputs = []
        async for out in eng.generate(_request("to-abort", max_tokens=1500)):
            outputs.append(out)
            if len(outputs) == 3:
                assert await eng.abort("to-abort") is True
        return outputs

    outputs = loop.run(scenario())
    assert outputs[-1].finished and outputs[-1].finish_reason is FinishReason.ABORT
    assert sum(len(out.new_token_ids) for out in outputs) < 1500
    assert loop.run(eng.abort("to-abort")) is False


def test_cancelled_consumer_aborts_engine_request(engine):
    eng, loop = engine
    first_output = asyncio.Event()

    async def consume():
        async for _ in eng.generate(_request("cancelled", max_tokens=1500)):
            first_output.set()

    async def scenario():
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_output.wait(), CALL_TIMEOUT_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        return eng._llm.get_num_unfinished_requests()

    assert loop.run(scenario()) == 0


def test_stats_report_a_running_request(engine):
    eng, loop = engine
    seen = []

    async def scenario():
        async for out in eng.generate(_request("observed", max_tokens=200)):
            if len(seen) < 50:
                seen.append(eng.stats())

    loop.run(scenario())
    assert any(s.running_requests == 1 and s.waiting_requests == 0 for s in seen)
    assert any(0.0 < s.kv_usage <= 1.0 for s in seen)
    final = eng.stats()
    assert final.running_requests == 0
    assert final.kv_capacity_tokens > 0
    assert final.recent_step_ms and all(ms > 0 for ms in final.recent_step_ms)
    assert len(final.recent_step_ms) <= 32
    assert eng.max_model_len == 2048


def _tail_request(request_id: str, prompt: list[int], stop: tuple[str, ...]) -> EngineRequest:
    return EngineRequest(request_id=request_id, prompt_token_ids=prompt, priority=1,
                         sampling=Sampling(max_tokens=12, temperature=0.0, ignore_eos=True, stop=stop))


def test_stop_strings_of_a_prompt_ending_mid_character_match_the_output_not_the_prompt(engine, model_dir):
    """A P/D decode leg's prompt may end with a byte of a character (P's first token). vLLM's
    text for it starts with the whole prompt, and it matched the stop strings there: a stop string
    in the prompt ended the request at its first token. The worker matches them over its own text
    (prompt_tail.TailStop): only the output stops it, where a colocated run's text would."""
    from tokenizers import Tokenizer

    from services.worker.engine import prompt_tail

    eng, loop = engine
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    byte = next(i for i in range(tok.get_vocab_size()) if tok.decode([i]) == prompt_tail.UNFINISHED)
    prompt = tok.encode("Go on:\n" + " ".join(f"w{i * 7 % 97}" for i in range(40))).ids + [byte]

    def run(request_id: str, stop: tuple[str, ...]):
        outputs = loop.run(_collect(eng, _tail_request(request_id, prompt, stop)))
        return [t for o in outputs for t in o.new_token_ids], "".join(o.text_delta for o in outputs), outputs[-1]

    tokens, text, last = run("tail-no-stop", ())
    assert len(tokens) == 12 and last.finish_reason is FinishReason.LENGTH
    in_prompt_only = [s for s in ("Go on", "\n", "w0 w7") if s not in text]
    assert in_prompt_only
    for s in in_prompt_only:  # vLLM's text had each of them at the first token
        assert run(f"tail-stop-{s!r}", (s,))[:2] == (tokens, text)

    # A stop string the output has: cut where it first appears, as vLLM cuts a colocated run.
    stream = prompt_tail.tail_text(tok, prompt)
    assert stream is not None
    ends = list(itertools.accumulate(len(stream.delta([t])) for t in tokens))  # text length after each token
    at = next(p for p in range(len(text) // 2, len(text)) if text[p:].strip())
    stop = next(text[at:at + n] for n in range(2, len(text) - at + 1) if text.find(text[at:at + n]) == at)
    k = next(i for i, end in enumerate(ends) if end >= at + len(stop))  # the token that completes it
    stopped_tokens, stopped_text, last = run("tail-stop-output", (stop,))
    assert last.finished and last.finish_reason is FinishReason.STOP
    assert (stopped_tokens, stopped_text) == (tokens[:k + 1], text[:at])
    assert loop.run(eng.abort("tail-stop-output")) is False  # aborted in vLLM: nothing left running
    assert eng._llm.get_num_unfinished_requests() == 0
