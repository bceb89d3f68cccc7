"""Where a local cluster records its addresses, process groups and id, so client commands find it
(and `hfx down` finds every process of it)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Every process of a local cluster is started with HFX_CLUSTER_ID=<its cluster_id> in its
# environment, and its descendants (vLLM's engine processes) inherit it: `hfx down` finds what is
# left of the cluster by this id, wherever a process was re-parented, never by process names.
CLUSTER_ID_ENV = "HFX_CLUSTER_ID"


def resolve_home(explicit: str | None) -> Path:
    """--home, else $HFX_HOME, else ~/.hfx (read when a command runs, never at import)."""
    return Path(explicit or os.environ.get("HFX_HOME") or Path.home() / ".hfx").expanduser()


@dataclass
class ClusterFile:
    router: str
    scheduler: str
    scaler: str
    redis_url: str
    redis_prefix: str
    model: str
    log_dir: str
    pgids: dict[str, int] = field(default_factory=dict)  # service name -> process group id
    started_unix_s: float = 0.0
    http: str = ""                                         # the router's HTTP API (host:port), "" if off
    metrics: dict[str, str] = field(default_factory=dict)  # service name -> host:port of its /metrics
    cluster_id: str = ""                                   # in every process's environment (CLUSTER_ID_ENV)

    @staticmethod
    def path(home: Path) -> Path:
        return home / "cluster.json"

    def save(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        tmp = self.path(home).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path(home))

    @classmethod
    def load(cls, home: Path) -> "ClusterFile | None":
        try:
            return cls(**json.loads(cls.path(home).read_text()))
        except FileNotFoundError:
            return None
