"""`hfx up --workers 1 --prefill 1 --decode 1` (SIMULATED workers): every worker registers its role,
`hfx status` and the scheduler show it, and a short prompt is still served (whole, on the
colocated worker: the HFX policy keeps short prompts in one place)."""

from __future__ import annotations

import json

import pytest

from services.cli import main
from services.common import grpcutil
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.harness import local_cluster, wait_until

pytestmark = pytest.mark.slow


def test_up_with_prefill_and_decode_workers_registers_their_roles(tmp_path, capsys):
    home = tmp_path / "home"
    with local_cluster(home, workers=1, prefill=1, decode=1, engine="sim", policy="hfx") as c:
        def roles():
            capsys.readouterr()
            assert main(["--home", str(home), "status", "--json"]) == 0
            rows = json.loads(capsys.readouterr().out)["instances"]
            return {r["instance_id"]: r["role"] for r in rows}
        assert wait_until(lambda: roles() == {"hfx-w0": "colocated", "hfx-p0": "prefill", "hfx-d0": "decode"}, 30)
        with grpcutil.sync_channel(c.state.scheduler) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            seen = lambda: {i.instance_id: i.role for i in stub.GetClusterState(  # noqa: E731
                scheduler_pb2.GetClusterStateRequest(), timeout=5).instances}
            assert wait_until(lambda: seen() == {"hfx-w0": common_pb2.ROLE_COLOCATED, "hfx-p0": common_pb2.ROLE_PREFILL,
                                                 "hfx-d0": common_pb2.ROLE_DECODE}, 10)
        capsys.readouterr()
        assert main(["--home", str(home), "generate", "hello there", "--max-tokens", "4", "--ignore-eos",
                     "--json", "--router", c.state.router]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["instance_id"] == "hfx-w0" and len(out["token_ids"]) == 4
    assert "colocated: short prompt" in (c.log_dir / "scheduler.log").read_text()
