"""What several `hfx` commands share: common service flags, the model default, the policy
settings' sources and API key files."""

from __future__ import annotations

import argparse
import os

from services import argtypes

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_tickets_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True,
                   help="while nothing waits, the scheduler grants each router tickets: standing placements "
                   "for one request within a bound (prompt and output at most, SLOs at least), checked by the "
                   "policy's own fit test, so such a request starts without a round trip to the scheduler; "
                   "--no-tickets: every request waits for its placement (default on)")


def add_common(p: argparse.ArgumentParser, redis: bool = True) -> None:
    if redis:
        p.add_argument("--redis-url", default=env("HFX_REDIS_URL", DEFAULT_REDIS_URL), type=argtypes.redis_url,
                       help=f"cluster state store (default: $HFX_REDIS_URL, else {DEFAULT_REDIS_URL})")
        p.add_argument("--redis-prefix", default="hfx", type=argtypes.non_empty,
                       help="key prefix, to share one Redis between clusters (default %(default)s)")
    p.add_argument("--tracing", default=env("HFX_TRACING", "off"), type=argtypes.tracing_config,
                   help="off | console | otlp | otlp=HOST:PORT (OTLP/gRPC, e.g. Jaeger on 4317) | file=DIR (local span store) "
                   "(default: $HFX_TRACING, else off)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default %(default)s)")


def default_model(args) -> str:
    if getattr(args, "model", None):
        return args.model
    from services.common.model import ensure_default_model

    return str(ensure_default_model())


def add_pd_local_prefill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pd-local-prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="P/D: a decode worker may prefill a short prompt itself instead of taking its KV from a "
                        "prefill worker (default: --policy-config's pd_local_prefill, else on; off: only colocated "
                        "and prefill workers prefill)")


def add_policy_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy-config", default=None, type=argtypes.policy_config_file, metavar="FILE",
                   help="YAML/JSON of the scheduling policy's settings (PolicyConfig fields, e.g. `chunk_tokens: "
                   "2048`); they win over what --profile and --classes imply (default: none)")


def policy_settings(args) -> dict:
    """The explicit policy settings of a command: its --policy-config file, then its flags."""
    from services.scheduler.policy.settings import load_settings

    settings = load_settings(args.policy_config) if args.policy_config else {}
    if getattr(args, "pd_local_prefill", None) is not None:
        settings["pd_local_prefill"] = args.pd_local_prefill
    return settings


def key_file(path: str) -> tuple:
    if not path:
        return ()
    from services.router.auth import read_key_file

    try:
        return read_key_file(path)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def add_api_key_flags(p: argparse.ArgumentParser, at: str = "") -> None:
    """--api-key / --api-key-file: the keys the router requires (`at`: " at the router" where the
    command starts one)."""
    p.add_argument("--api-key", action="append", default=[], type=argtypes.non_empty,
                   help=f"require this API key{at} (repeatable; visible in the process listing: prefer "
                   "--api-key-file) (default: none, the API is open)")
    p.add_argument("--api-key-file", default=env("HFX_API_KEY_FILE", ""),
                   help="require the API keys in this file, one per line as `KEY [max_priority=N]` (N: the highest "
                   "priority that key may ask for), # comments (default: $HFX_API_KEY_FILE, else none)")
