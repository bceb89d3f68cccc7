"""hfx explain --jaeger: the query it sends to Jaeger's HTTP API and what it does with the answer.
Jaeger itself cannot run here, so a loopback HTTP server in this test answers with the recorded
sample (tests/unit/data/jaeger_trace.json, in Jaeger's /api/traces format)."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import pytest

from services.cli import main
from services.common import procs
from services.explain.sources import JaegerQuery, SourceError

SAMPLE = (Path(__file__).parent / "data" / "jaeger_trace.json").read_bytes()


@pytest.fixture
def jaeger():
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            url = urllib.parse.urlparse(self.path)
            seen.append({"path": url.path, **{k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(SAMPLE)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_explain_from_jaeger_asks_for_the_request_by_tag(jaeger, capsys):
    url, seen = jaeger
    assert main(["explain", "r-b", "--jaeger", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["request_id"] == "r-b" and doc["cause"] == "prefill_interference" and "r-long" in doc["cause_text"]
    (query,) = seen
    assert query["path"] == "/api/traces" and query["service"] == "hfx-router"
    assert query["operation"] == "router.generate" and json.loads(query["tags"]) == {"hfx.request_id": "r-b"}
    assert int(query["end"]) > int(query["start"]) > 0


def test_missed_from_jaeger_asks_for_slo_met_false(jaeger, capsys):
    url, seen = jaeger
    assert main(["explain", "--missed", "--since", "10m", "--limit", "7", "--jaeger", url, "--json"]) == 0
    assert [d["request_id"] for d in json.loads(capsys.readouterr().out)] == ["r-b"]
    assert json.loads(seen[0]["tags"]) == {"hfx.slo_met": "false"} and seen[0]["limit"] == "7"
    assert 599 <= (int(seen[0]["end"]) - int(seen[0]["start"])) / 1e6 <= 601


def test_unreachable_jaeger_is_an_error_not_a_crash(capsys):
    url = f"http://127.0.0.1:{procs.free_port()}"
    with pytest.raises(SourceError):
        JaegerQuery(url, timeout_s=2).request("r-b", 0.0)
    assert main(["explain", "r-b", "--jaeger", url]) == 1
    assert "Jaeger query" in capsys.readouterr().err
