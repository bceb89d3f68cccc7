"""The local span store: finished spans as JSON lines in a directory, one file per process.

`hfx up` points every process of a local cluster here by default (`--tracing file=DIR`, DIR =
HOME/traces), so `hfx explain` can answer "why did this request miss its SLO?" with no tracing
backend running. Each process appends to its own file (SERVICE-PID.jsonl): no two writers share a
file, so lines never interleave; a span is written when it ends, so a process that dies loses
none. A file past `max_bytes` is renamed to SERVICE-PID.old.jsonl (replacing the previous one), so
the store keeps at most about twice `max_bytes` per process.

One line per span (this module owns the format; `read_spans` reads it back):
  {"trace_id": 32 hex, "span_id": 16 hex, "parent_id": 16 hex or "", "name", "service",
   "start_unix_s", "end_unix_s", "status": "UNSET|OK|ERROR", "attributes": {...},
   "events": [{"name", "time_unix_s", "attributes": {...}}]}
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("hfx.spanstore")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_unix_s: float
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, whatever store it came from (this file, Jaeger's query API)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    start_unix_s: float
    end_unix_s: float
    attributes: dict = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    status: str = "UNSET"

    @property
    def duration_ms(self) -> float:
        return (self.end_unix_s - self.start_unix_s) * 1000.0

    def event(self, name: str) -> SpanEvent | None:
        return next((e for e in self.events if e.name == name), None)


def _plain(value):
    """OTel attribute values (tuples for lists) as JSON values."""
    return list(value) if isinstance(value, (tuple, list)) else value


def to_line(span: ReadableSpan) -> str | None:
    """The span's line; None for a span without a context (the SDK's spans have one), which has
    no ids to store it under."""
    ctx = span.get_span_context()
    if ctx is None:
        return None
    parent = span.parent
    doc = {
        "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else "",
        "name": span.name, "service": str(span.resource.attributes.get("service.name", "")),
        "start_unix_s": (span.start_time or 0) / 1e9, "end_unix_s": (span.end_time or 0) / 1e9,
        "status": span.status.status_code.name,
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "events": [{"name": e.name, "time_unix_s": e.timestamp / 1e9,
                    "attributes": {k: _plain(v) for k, v in (e.attributes or {}).items()}} for e in span.events],
    }
    return json.dumps(doc, separators=(",", ":"))


def from_doc(doc: dict) -> SpanRecord:
    """A line's JSON object as a SpanRecord; KeyError/TypeError/ValueError when it is not one."""
    return SpanRecord(
        trace_id=str(doc["trace_id"]), span_id=str(doc["span_id"]), parent_id=str(doc.get("parent_id") or ""),
        name=str(doc["name"]), service=str(doc.get("service", "")),
        start_unix_s=float(doc["start_unix_s"]), end_unix_s=float(doc["end_unix_s"]),
        attributes=dict(doc.get("attributes") or {}), status=str(doc.get("status", "UNSET")),
        events=tuple(SpanEvent(str(e["name"]), float(e["time_unix_s"]), dict(e.get("attributes") or {}))
                     for e in doc.get("events") or ()),
    )


class JsonLinesSpanExporter(SpanExporter):
    """OTel span exporter appending one JSON line per span to `path` (one write per export call:
    per span under tracing.store_processor)."""

    def __init__(self, path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_process(cls, directory: str | os.PathLike, service_name: str) -> "JsonLinesSpanExporter":
        return cls(Path(directory) / f"{service_name}-{os.getpid()}.jsonl")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        text = "".join(line + "\n" for line in map(to_line, spans) if line is not None)
        try:
            with self._lock:
                self._rotate_if_full()
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(text)
        except OSError as err:  # a full disk must not take the service down with it
            log.warning("span store %s: %s", self.path, err)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        os.replace(self.path, self.path.with_name(self.path.stem + ".old.jsonl"))

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def prune(directory: str | os.PathLike, max_age_s: float, now_unix_s: float) -> int:
    """Deletes store files not written for max_age_s (processes long gone); returns how many."""
    removed = 0
    for path in Path(directory).glob("*.jsonl"):
        try:
            if now_unix_s - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def read_spans(directory: str | os.PathLike, since_unix_s: float | None = None) -> list[SpanRecord]:
    """Every span in the store (ended at or after since_unix_s when given), sorted by start.
    Lines that do not parse (a process mid-write) are skipped."""
    spans: list[SpanRecord] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        spans.extend(_read_file(path, since_unix_s))
    return sorted(spans, key=lambda s: (s.start_unix_s, s.span_id))


def _read_file(path: Path, since_unix_s: float | None) -> Iterable[SpanRecord]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        try:
            span = from_doc(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if since_unix_s is None or span.end_unix_s >= since_unix_s:
            yield span
