"""`hfx router`: run the router process."""

from __future__ import annotations

from services import argtypes
from services.common import runtime
from services.commands.common import add_api_key_flags, add_common, default_model, key_file


def add_parsers(sub) -> None:
    p = sub.add_parser("router", help="run the router process")
    add_common(p, redis=False)
    p.add_argument("--port", type=argtypes.port, default=50051, help="gRPC port (default %(default)s)")
    p.add_argument("--model", type=argtypes.model_dir,
                   help="checkpoint dir, for its tokenizer (default: the built-in tiny model)")
    p.add_argument("--scheduler", required=True, type=argtypes.address, help="scheduler address HOST:PORT (required)")
    p.add_argument("--classes", type=argtypes.classes_file,
                   help="YAML task-class table (SLO/priority defaults per class) (default: the built-in classes)")
    p.add_argument("--default-max-tokens", type=argtypes.positive_int, default=64,
                   help="max_tokens of requests that set none (default %(default)s)")
    p.add_argument("--http-port", type=argtypes.port_or_zero, default=8000,
                   help="OpenAI-compatible HTTP API and /metrics; 0 = off (default %(default)s)")
    add_api_key_flags(p)
    p.add_argument("--max-body-bytes", type=argtypes.positive_int, default=4 << 20,
                   help="largest HTTP request body; a bigger one is refused with 413 before it is parsed or its "
                   "API key checked (default %(default)s)")
    p.add_argument("--max-inflight", type=argtypes.positive_int, default=4096,
                   help="requests in this router at once, both front doors; more are refused with 429 / "
                   "RESOURCE_EXHAUSTED and a retry hint (default %(default)s)")
    p.add_argument("--max-failovers", type=argtypes.non_negative_int, default=2,
                   help="a request whose instance fails under it (dies, ends its stream, goes silent) is placed "
                   "again elsewhere with the tokens already streamed, up to this many times; 0 = it fails "
                   "(default %(default)s)")
    p.add_argument("--client-stall-timeout-s", type=argtypes.positive_float, default=30.0,
                   help="a streaming client that takes no message for this long (it stopped reading and its "
                   "buffers are full) is treated as gone: its request ends, freeing the worker and the "
                   "scheduler's slot (default %(default)s)")
    p.add_argument("--tls-cert", type=argtypes.existing_file,
                   help="serve both front doors (gRPC and HTTP) over TLS with this PEM certificate chain; needs "
                   "--tls-key (default: plain text)")
    p.add_argument("--tls-key", type=argtypes.existing_file, help="the PEM private key for --tls-cert")
    p.set_defaults(func=cmd_router, check=_check_router, parser_error=p.error)


def cmd_router(args) -> int:
    from services.router.config import DEFAULT_CLASSES, RouterConfig, load_classes
    from services.router.server import serve

    config = RouterConfig(
        model=default_model(args), scheduler_address=args.scheduler, host=args.host, port=args.port,
        http_port=args.http_port, api_keys=tuple(args.api_key) + key_file(args.api_key_file),
        classes=load_classes(args.classes) if args.classes else DEFAULT_CLASSES,
        default_max_tokens=args.default_max_tokens, tracing=args.tracing, max_failovers=args.max_failovers,
        max_body_bytes=args.max_body_bytes, max_inflight=args.max_inflight,
        tls_cert=args.tls_cert or "", tls_key=args.tls_key or "", client_stall_timeout_s=args.client_stall_timeout_s,
    )
    runtime.run_service(serve(config))
    return 0


def _check_router(args) -> str | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    return None
