"""Weights pulled from a donor into a real vLLM engine (issue 12), against vLLM's own output.

Two engines in all: vLLM's offline LLM loading the tiny model from storage (the reference, in a
subprocess, started first so the two start-ups overlap) and one VllmEngine started with dummy
weights that pulls them from a donor serving the checkpoint from memory, as a donor worker does
(over shared memory at start, the way a donor on the same host is reached; over TCP after). The engine is then spoiled on purpose (a well-formed stream of wrong weights) before
each failure case, so a case passes only if its fallback really reloaded every weight.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.domain import Sampling
from services.common.model import ensure_default_model
from services.worker.engine import make_engine
from services.worker.engine.base import EngineRequest
from services.worker.engine.vllm_engine import VllmEngineConfig
from services.worker.weights.source import CheckpointSource
from services.worker.weights.tcp import TcpWeightServer
from services.worker.weights.transport import transport_for
from tests.integration.test_vllm_engine import _LoopThread
from tests.weight_helpers import DyingSource, ListSource, corrupt_one, rolled

pytestmark = pytest.mark.slow

PROMPT_TOKEN_IDS = [1, 43, 343, 1515, 1196, 15, 262, 1294]
# Longer than one KV block (128 tokens on CPU): its first block can come from the prefix cache.
LONG_PROMPT_TOKEN_IDS = [1] + [4 + (i * 37) % 1000 for i in range(199)]
GREEDY_TOKENS = 24
START_TIMEOUT_S = 240.0
REFERENCE = Path(__file__).resolve().parents[1] / "vllm_reference.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_default_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def reference(model_dir):
    proc = subprocess.Popen(
        [sys.executable, str(REFERENCE), str(model_dir),
         ";".join(",".join(map(str, p)) for p in (PROMPT_TOKEN_IDS, LONG_PROMPT_TOKEN_IDS)), str(GREEDY_TOKENS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def source(model_dir):
    return CheckpointSource.load(model_dir)


@pytest.fixture(scope="module")
def donor(source):
    handle = transport_for("cpu").serve(source, "127.0.0.1", 0)  # TCP and shared memory, as a worker serves
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def engine(model_dir, donor, reference):
    loop = _LoopThread()
    eng = make_engine("vllm", VllmEngineConfig(model=str(model_dir), weights_from=donor.address,
                                               weights_stall_timeout_s=2.0))
    loop.run(eng.start(), timeout_s=START_TIMEOUT_S)
    yield eng, loop
    loop.run(eng.shutdown())
    loop.close()


@pytest.fixture(scope="module")
def references(reference) -> list[list[int]]:
    """vLLM's greedy tokens for PROMPT_TOKEN_IDS, then for LONG_PROMPT_TOKEN_IDS."""
    stdout, stderr = reference.communicate(timeout=START_TIMEOUT_S)
    assert reference.returncode == 0, stderr[-3000:]
    return [[int(t) for t in line[7:].split(",")] for line in stdout.splitlines() if line.startswith("RESULT ")]


@pytest.fixture(scope="module")
def expected(references):
    return references[0]


_ids = itertools.count()


def greedy(eng, loop, prompt: list[int] = PROMPT_TOKEN_IDS) -> list[int]:
    req = EngineRequest(request_id=f"greedy-{next(_ids)}", prompt_token_ids=list(prompt),
                        sampling=Sampling(max_tokens=GREEDY_TOKENS, temperature=0.0, ignore_eos=True))

    async def collect():
        return [t async for out in eng.generate(req) for t in out.new_token_ids]

    return loop.run(collect())


def serve_once(source):
    return TcpWeightServer(source).start()


def spoil(eng, loop, source, expected) -> None:
    """Load wrong weights (a clean stream of shifted tensors) and check they change the output."""
    bad = serve_once(ListSource(source.identity, rolled(list(source.entries()))))
    try:
        report = loop.run(eng.pull_weights(bad.address, fallback=False))
    finally:
        bad.close()
    assert report["source"] == "donor"
    assert greedy(eng, loop) != expected


def test_engine_started_dummy_serves_vllm_tokens_after_the_pull(engine, expected, source):
    eng, loop = engine
    report = eng.weights_report
    assert report["source"] == "donor" and report["transport"] == "shm", report
    assert report["bytes"] == source.total_bytes and report["tensors"] == source.tensor_count
    assert eng.timings["weight_load_s"] > 0
    tokens = greedy(eng, loop)
    assert tokens == expected
    assert len(set(tokens)) > 1


def test_a_pull_over_tcp_replaces_wrong_weights_exactly(engine, expected, source):
    eng, loop = engine
    spoil(eng, loop, source, expected)
    tcp_only = serve_once(source)
    try:
        report = loop.run(eng.pull_weights(tcp_only.address, fallback=False))
    finally:
        tcp_only.close()
    assert report["source"] == "donor" and report["transport"] == "tcp", report
    assert greedy(eng, loop) == expected


def test_a_pull_prepared_ahead_reads_the_mapped_pages_and_replaces_wrong_weights_exactly(engine, expected, source,
                                                                                          donor):
    """PrepareWeights' engine side: the donor's files mapped and faulted in inside vLLM's engine
    process, then the pull from that donor reads through them."""
    eng, loop = engine
    spoil(eng, loop, source, expected)
    prepared = loop.run(eng.prepare_pull(donor.address))
    assert prepared["prepared"] and prepared["populated"] and prepared["bytes"] >= source.total_bytes, prepared
    report = loop.run(eng.pull_weights(donor.address, fallback=False))
    assert report["source"] == "donor" and report["transport"] == "shm" and report["premapped"], report
    assert greedy(eng, loop) == expected


def test_donor_dying_mid_stream_falls_back_to_storage(engine, expected, source):
    eng, loop = engine
    spoil(eng, loop, source, expected)
    entries = list(source.entries())
    dying = serve_once(DyingSource(source.identity, entries, after=len(entries) // 2))
    try:
        report = loop.run(eng.pull_weights(dying.address))
    finally:
        dying.close()
    assert report["source"] == "storage" and report["failure"].startswith("donor-lost"), report
    assert 0 < report["tensors"] < len(entries)  # part of the stream had been loaded before it broke
    assert greedy(eng, loop) == expected


def test_corrupted_tensor_is_detected_and_storage_serves(engine, expected, source):
    eng, loop = engine
    spoil(eng, loop, source, expected)
    entries = list(source.entries())
    bad = serve_once(ListSource(source.identity, corrupt_one(entries, len(entries) - 1)))
    try:
        report = loop.run(eng.pull_weights(bad.address))
    finally:
        bad.close()
    assert report["source"] == "storage" and report["failure"].startswith("integrity"), report
    assert "CRC32" in report["failure"]
    assert greedy(eng, loop) == expected


def test_donor_of_another_model_is_refused(engine, expected, source, model_dir, tmp_path):
    eng, loop = engine
    spoil(eng, loop, source, expected)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    config = other / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"hfx_variant": 2, "rms_norm_eps"'))
    wrong = serve_once(CheckpointSource.load(other))
    try:
        report = loop.run(eng.pull_weights(wrong.address))
    finally:
        wrong.close()
    assert report["source"] == "storage" and report["failure"].startswith("identity"), report
    assert report["tensors"] == 0
    assert greedy(eng, loop) == expected


def test_kv_computed_under_other_weights_is_not_reused_after_a_load(engine, expected, references, source):
    """vLLM's prefix cache is keyed by token ids: KV a prompt left under other weights (a standby's
    dummy ones, during its latency profile at start) must not serve it after a load."""
    eng, loop = engine
    spoil(eng, loop, source, expected)
    assert greedy(eng, loop, LONG_PROMPT_TOKEN_IDS) != references[1]  # its first block is cached now, wrong
    good = serve_once(source)
    try:
        report = loop.run(eng.pull_weights(good.address, fallback=False))
    finally:
        good.close()
    assert report["source"] == "donor", report
    assert greedy(eng, loop, LONG_PROMPT_TOKEN_IDS) == references[1]
    assert greedy(eng, loop) == expected
