"""Where `hfx explain` reads spans: the local span store (services/common/spanstore.py) or
Jaeger's HTTP query API (`/api/traces`, the JSON its UI uses). Jaeger's JSON becomes the same
SpanRecords as the store's, so the analysis never knows which it read."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

from services.common import tracing as t
from services.common.spanstore import SpanEvent, SpanRecord, read_spans

ROUTER_SERVICE = "hfx-router"


class SourceError(RuntimeError):
    """The spans could not be read (unreachable backend, unreadable answer)."""


class SpanSource(Protocol):
    def request(self, request_id: str, since_unix_s: float) -> list[SpanRecord]:
        """The spans of one request's trace (with whatever else is cheaper to read than to skip)."""
        ...

    def missed(self, since_unix_s: float, limit: int) -> list[SpanRecord]:
        """The spans of the traces of requests that missed their SLO since `since_unix_s`."""
        ...


class LocalStore:
    def __init__(self, directory) -> None:
        self.directory = directory

    def request(self, request_id: str, since_unix_s: float) -> list[SpanRecord]:
        return read_spans(self.directory, since_unix_s)

    def missed(self, since_unix_s: float, limit: int) -> list[SpanRecord]:
        return read_spans(self.directory, since_unix_s)


class JaegerQuery:
    """Jaeger's query service (the UI's port, 16686 by default)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, request_id: str, since_unix_s: float) -> list[SpanRecord]:
        return self._search({t.ATTR_REQUEST_ID: request_id}, since_unix_s, limit=5)

    def missed(self, since_unix_s: float, limit: int) -> list[SpanRecord]:
        return self._search({t.ATTR_SLO_MET: "false"}, since_unix_s, limit)

    def _search(self, tags: dict, since_unix_s: float, limit: int) -> list[SpanRecord]:
        query = urllib.parse.urlencode({
            "service": ROUTER_SERVICE, "operation": t.SPAN_ROUTER, "tags": json.dumps(tags),
            "start": int(since_unix_s * 1e6), "end": int(time.time() * 1e6), "limit": limit})
        url = f"{self.url}/api/traces?{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                doc = json.load(reply)
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            raise SourceError(f"Jaeger query {url} failed: {err}") from None
        return parse_jaeger(doc)


def parse_jaeger(doc: dict) -> list[SpanRecord]:
    """Jaeger's /api/traces (or /api/traces/ID) JSON as SpanRecords. Raises SourceError when it is
    not that shape. Times there are microseconds; tags and log fields are typed key/values."""
    try:
        spans = []
        for trace in doc.get("data") or ():
            processes = trace.get("processes") or {}
            for s in trace.get("spans") or ():
                parent = next((r["spanID"] for r in s.get("references") or () if r.get("refType") == "CHILD_OF"), "")
                start = s["startTime"] / 1e6
                attrs = {tag["key"]: _tag_value(tag) for tag in s.get("tags") or ()}
                events = []
                for entry in s.get("logs") or ():
                    fields = {f["key"]: _tag_value(f) for f in entry.get("fields") or ()}
                    events.append(SpanEvent(str(fields.pop("event", "")), entry["timestamp"] / 1e6, fields))
                spans.append(SpanRecord(
                    trace_id=s["traceID"].rjust(32, "0"), span_id=s["spanID"], parent_id=parent,
                    name=s["operationName"], service=processes.get(s.get("processID"), {}).get("serviceName", ""),
                    start_unix_s=start, end_unix_s=start + s.get("duration", 0) / 1e6, attributes=attrs,
                    events=tuple(events), status="ERROR" if attrs.get("otel.status_code") == "ERROR" else "UNSET"))
        return spans
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise SourceError(f"not Jaeger's trace JSON: {type(err).__name__}: {err}") from None


def _tag_value(tag: dict):
    value, kind = tag.get("value"), tag.get("type", "string")
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if kind in ("int64", "float64"):
        if value is None:
            raise TypeError(f"{kind} tag {tag.get('key')!r} without a value")
        return int(value) if kind == "int64" else float(value)
    if kind == "string" and isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:  # OTel list attributes arrive as a JSON array in a string tag
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
