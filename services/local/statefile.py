"""Where a local cluster records its addresses and process groups (with their leaders' start
times), so client commands find it and `hfx down` finds every process of it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common import proctable


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
    # process group id (as text) -> its leader's start time (clock ticks since boot), so that
    # `down` never takes a reused id for the group it recorded
    starts: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, pid: int) -> None:
        """A service started as `pid`, the leader of its own session and process group."""
        self.pgids[name] = pid
        ticks = proctable.start_ticks_of(pid)
        if ticks is not None:
            self.starts[str(pid)] = ticks

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
