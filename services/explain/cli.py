"""`hfx explain`: the command. Reads spans from a source, runs the analysis, prints or draws."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services import argtypes

DESCRIPTION = """\
Why did a request miss its SLO? Reads the request's trace and prints where its time went:
admission and queue wait, the decision that placed it (policy, reason, predicted TTFT, slack,
budget, and the load it saw), its prefill, other requests' prefills that ran alongside it
(before its first token, and during its decode), preemption and resume, KV transfer, decode;
which SLO it missed, by how much, and the largest cause.

Spans come from the local cluster's span store (`hfx up` keeps them under HOME/traces unless
started with another --tracing), from another store directory (--traces), or from Jaeger's
query API (--jaeger http://HOST:16686, when the cluster sent its spans there with
--tracing otlp=HOST:4317).

examples:
  hfx explain r-0123456789abcdef            one request, as text
  hfx explain --missed --since 5m           every request that missed its SLO in the last 5 minutes
  hfx explain r-0123456789abcdef --json     the same as JSON, for scripts
  hfx explain r-0123456789abcdef --plot waterfall.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="why a request missed its SLO, from its trace",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("request_id", nargs="?", help="the request id (the final message's request_id, "
                   "the x-hfx-request-id header of the HTTP API)")
    p.add_argument("--missed", action="store_true", help="explain every request that missed its SLO instead")
    p.add_argument("--since", type=argtypes.duration_s, default=None,
                   help="how far back to look: 90s, 5m, 2h, 1d (default: 1d for one request, 5m with --missed)")
    p.add_argument("--limit", type=argtypes.positive_int, default=50,
                   help="with --missed: at most this many requests, the latest (default %(default)s)")
    p.add_argument("--traces", type=Path, default=None,
                   help="a span store directory (default: HOME/traces, the local cluster's)")
    p.add_argument("--jaeger", metavar="URL", default=None,
                   help="read from Jaeger's query API at URL (e.g. http://127.0.0.1:16686) instead of a store")
    p.add_argument("--json", action="store_true", help="print JSON (one object; a list with --missed)")
    p.add_argument("--plot", metavar="FILE.png", type=Path, default=None,
                   help="also draw the request's waterfall to this PNG (with --missed: FILE-REQUEST_ID.png each)")
    p.set_defaults(func=run, check=_check, parser_error=p.error)


def _check(args) -> str | None:
    """Flags that contradict each other (a usage error, exit 2)."""
    if bool(args.request_id) == bool(args.missed):
        return "give a REQUEST_ID or --missed (one of them)"
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        return f"--plot: expected a .png file name, got {str(args.plot)!r}"
    return None


def run(args) -> int:
    from services.explain import analysis, render
    from services.explain.sources import JaegerQuery, LocalStore, SourceError
    from services.local.cluster import traces_dir

    source = JaegerQuery(args.jaeger) if args.jaeger else LocalStore(args.traces or traces_dir(args.home))
    since = time.time() - (args.since or (300.0 if args.missed else 86400.0))
    try:
        spans = source.missed(since, args.limit) if args.missed else source.request(args.request_id, since)
    except SourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ids = analysis.request_ids(spans, missed_only=True)[-args.limit:] if args.missed else [args.request_id]
    try:
        explained = [analysis.explain(spans, rid) for rid in ids]
    except analysis.NotFound as err:
        where = args.jaeger or args.traces or traces_dir(args.home)
        print(f"error: {err} (read {len(spans)} spans from {where}, since {args.since or 86400:g}s ago)", file=sys.stderr)
        return 1
    if args.plot is not None:
        from services.explain.plot import waterfall

        for exp in explained:
            path = args.plot if not args.missed else args.plot.with_name(f"{args.plot.stem}-{exp.request_id}.png")
            waterfall(exp, path)
            print(f"waterfall: {path}", file=sys.stderr)
    if args.json:
        docs = [_json_doc(e) for e in explained]
        print(json.dumps(docs if args.missed else docs[0], indent=2))
    else:
        if args.missed and not explained:
            print(f"no request missed its SLO in the last {args.since or 300:g}s ({len(spans)} spans read)")
        else:
            print("\n\n".join(render.text(e) for e in explained))
    return 0


def _json_doc(exp) -> dict:
    doc = exp.to_dict()
    doc.pop("intervals")  # the picture's raw material; the breakdowns hold its sums
    return doc
