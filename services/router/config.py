"""Typed router configuration and the task-class table (SLO and priority defaults per class)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.domain import Slo
from services.common.tracing import TracingConfig
from services.router.auth import ApiKey


@dataclass(frozen=True)
class TaskClass:
    name: str
    slo: Slo
    priority: int
    # What to do when admission finds the SLO cannot be met: "reject" or "best_effort".
    on_miss: str = "best_effort"


# Defaults sized for the tiny CPU model; production deployments pass --classes FILE.
DEFAULT_CLASSES: tuple[TaskClass, ...] = (
    TaskClass("default", Slo(ttft_ms=2000, tpot_ms=200), priority=1),
    TaskClass("chat", Slo(ttft_ms=1000, tpot_ms=100), priority=2),
    TaskClass("code", Slo(ttft_ms=300, tpot_ms=50), priority=3),
    TaskClass("summarise", Slo(ttft_ms=5000, tpot_ms=200), priority=1),
    TaskClass("batch", Slo(ttft_ms=30000, tpot_ms=1000), priority=0, on_miss="best_effort"),
)


def load_classes(path: str | Path) -> tuple[TaskClass, ...]:
    """Reads `classes: [{name, ttft_ms, tpot_ms, priority, on_miss}]` from YAML, strictly."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    rows = doc.get("classes")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list under 'classes'")
    out = []
    for i, row in enumerate(rows):
        unknown = set(row) - {"name", "ttft_ms", "tpot_ms", "priority", "on_miss"}
        if unknown:
            raise ValueError(f"{path}: classes[{i}] has unknown keys {sorted(unknown)}")
        try:
            cls = TaskClass(str(row["name"]), Slo(float(row["ttft_ms"]), float(row["tpot_ms"])),
                            int(row.get("priority", 1)), str(row.get("on_miss", "best_effort")))
        except KeyError as err:
            raise ValueError(f"{path}: classes[{i}] is missing {err}") from None
        if cls.slo.ttft_ms <= 0 or cls.slo.tpot_ms <= 0 or cls.on_miss not in {"reject", "best_effort"}:
            raise ValueError(f"{path}: classes[{i}] needs positive SLOs and on_miss reject|best_effort")
        out.append(cls)
    return tuple(out)


@dataclass(frozen=True)
class RouterConfig:
    model: str
    scheduler_address: str
    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int = 8000                  # the OpenAI-compatible HTTP API and /metrics; 0 = off
    api_keys: tuple[ApiKey | str, ...] = ()  # when set, both HTTP and gRPC require one (Bearer)
    classes: tuple[TaskClass, ...] = DEFAULT_CLASSES
    default_max_tokens: int = 64
    max_prompt_bytes: int = 1 << 20        # checked before tokenising, so huge inputs cost nothing
    max_body_bytes: int = 4 << 20          # HTTP bodies, checked before parsing and before auth
    max_inflight: int = 4096               # requests in the router at once (both front doors); more: refused
    inline_tokenize_chars: int = 16_384    # longer text prompts (and chats) are tokenised off the event loop
    max_stop_strings: int = 16
    place_timeout_s: float = 35.0          # scheduler queue wait (30 s) plus margin
    first_token_timeout_s: float = 120.0   # a worker that says nothing this long is treated as failed
    token_idle_timeout_s: float = 30.0
    client_stall_timeout_s: float = 30.0   # a client that takes no message this long is gone: its request ends
    # A request whose instance fails under it (dies, closes its stream, goes silent) is placed
    # again elsewhere with the tokens it streamed, this many times, before it fails.
    max_failovers: int = 2
    scheduler_call_timeout_s: float = 2.0
    # TLS on both front doors (gRPC and HTTP): PEM certificate chain and private key files; both
    # empty: plain text (a private network, or TLS ended in front of the router).
    tls_cert: str = ""
    tls_key: str = ""
    tracing: TracingConfig = field(default_factory=TracingConfig)
