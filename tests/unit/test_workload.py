"""Workload YAML parsing, arrival processes and Azure trace replay."""

from __future__ import annotations

import statistics

import pytest

from services.common.domain import LatencyModel
from services.sim.cli import DEFAULT_WORKLOAD
from services.sim.workload import generate, load_workload, parse_workload, read_azure_trace

MODEL = LatencyModel(3.0, 0.02, 0.15, 0.0005)


def make_doc(**class_overrides) -> dict:
    cls = {"name": "chat", "weight": 1, "priority": 1,
           "prompt_tokens": {"dist": "lognormal", "mean": 512, "sigma": 0.6, "max": 4096},
           "output_tokens": {"dist": "constant", "mean": 16},
           "ttft_slo_scale": 5, "tpot_slo_scale": 2}
    cls.update(class_overrides)
    return {"classes": [cls], "arrival": {"process": "poisson"}}


def test_default_workload_has_four_classes_with_scaled_slos():
    wl = load_workload(DEFAULT_WORKLOAD)
    assert len(wl.classes) >= 4 and wl.process == "gamma"
    chat = next(c for c in wl.classes if c.name == "chat")
    # 512-token prompt on an empty instance: 1 chunk of 512 -> 3 + 0.02*512 = 13.24 ms; x5
    assert chat.slo(MODEL, 512).ttft_ms == pytest.approx(5 * 13.24)
    # one decode step at batch 1 over the mean prompt's KV: 3 + 0.15 + 0.0005*512 = 3.406 ms; x3
    assert chat.slo(MODEL, 512).tpot_ms == pytest.approx(3 * 3.406)


@pytest.mark.parametrize("overrides, message", [
    ({"weight": "heavy"}, r"classes\[0\]\.weight: expected a number"),
    ({"weight": 0}, r"classes\[0\]\.weight: must be > 0"),
    ({"ttft_slo_scale": None}, r"classes\[0\]\.ttft_slo_scale"),
    ({"prompt_tokens": {"dist": "zipf", "mean": 3}}, r"prompt_tokens\.dist: 'zipf' is not one of"),
    ({"prompt_tokens": {"mean": 10, "max": 5}}, r"prompt_tokens: need min <= mean <= max"),
    ({"on_miss": "drop"}, r"on_miss: must be best_effort or reject"),
    ({"priority": 1.5}, r"priority: expected an integer"),
])
def test_bad_class_fields_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_workload(make_doc(**overrides))


def test_bad_documents():
    with pytest.raises(ValueError, match="missing field 'classes'"):
        parse_workload({"arrival": {}})
    with pytest.raises(ValueError, match="arrival.process: 'hawkes'"):
        parse_workload({**make_doc(), "arrival": {"process": "hawkes"}})
    doc = make_doc()
    doc["classes"] = doc["classes"] * 2
    with pytest.raises(ValueError, match="duplicate class names"):
        parse_workload(doc)
    missing = make_doc()
    del missing["classes"][0]["output_tokens"]
    with pytest.raises(ValueError, match=r"classes\[0\]: missing field 'output_tokens'"):
        parse_workload(missing)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("classes: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_workload(path)


def test_generate_poisson_and_gamma_rates_and_determinism():
    for process, cv in (("poisson", 1.0), ("gamma", 2.0)):
        wl = parse_workload({**make_doc(), "arrival": {"process": process, "cv": cv}})
        reqs = generate(wl, 50.0, 4000, 7, MODEL, 512)
        assert reqs == generate(wl, 50.0, 4000, 7, MODEL, 512)
        gaps = [b.spec.arrival_s - a.spec.arrival_s for a, b in zip(reqs, reqs[1:])]
        assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.1)
        assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.15)
    # max_tokens is the class maximum (default 8x mean); the true length is what the engine runs
    assert all(r.output_tokens == 16 and r.spec.max_tokens == 128 for r in reqs)


def test_azure_trace_replay(tmp_path):
    trace = tmp_path / "azure.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.6805900,396,109\n"
                     "2023-11-16 18:15:48.6805900,879,45\n")
    rows = read_azure_trace(trace)
    assert [r[1] for r in rows] == [374, 879, 396] and rows[-1][0] == pytest.approx(4.0)
    wl = parse_workload({**make_doc(), "arrival": {"trace": "azure.csv"}}, base_dir=tmp_path)
    reqs = generate(wl, 1.0, 10, 1, MODEL, 512)   # 3 rows over 4 s replayed at 1 rps: 3 s span
    assert [r.spec.prompt_tokens for r in reqs] == [374, 879, 396]
    assert reqs[-1].spec.arrival_s == pytest.approx(3.0)


def test_trace_missing_columns(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("TIMESTAMP,ContextTokens\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        read_azure_trace(trace)
