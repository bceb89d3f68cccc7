"""Role changes behind the real mesh (issue 11): `hfx up` with SIMULATED P/D workers (router,
scheduler, scaler, Redis all real).

- Under load: requests stream through the router while `hfx role` turns a decode worker into a
  prefill worker and a prefill worker into a decode worker. No request is lost or fails, every one
  streams all its tokens, the registry records the reasons, the links follow the new roles, and
  requests placed after a change use the instance in its new role.
- A worker the scaler restarts after a crash comes back in the role it had in the registry (its
  last role change), not the role its slot was launched with.
"""

from __future__ import annotations

import os
import signal

import pytest

from services.cli import main
from services.common.pb.hfx.v1 import common_pb2, router_pb2
from tests.harness import actions_under_load, incomplete, links_of, local_cluster, registry, wait_until

pytestmark = pytest.mark.slow
MAX_TOKENS = 24


def _request(client: int, i: int) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    req.token_ids.ids[:] = [100 + (client * 10_000 + i + k) % 500 for k in range(400)]   # long enough to be split P -> D
    return req


def role_change(home, instance: str, role: str, reason: str):
    """`hfx role INSTANCE ROLE --reason REASON`, as an action for actions_under_load."""
    def change() -> None:
        assert main(["--home", str(home), "role", instance, role, "--reason", reason]) == 0
    return change


def test_role_changes_under_load_lose_no_request(tmp_path, capsys):
    home = tmp_path / "home"
    with local_cluster(home, workers=0, prefill=2, decode=2, engine="sim", policy="hfx") as c:
        url = c.state.redis_url
        want = {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-d1"), ("hfx-p1", "hfx-d0"), ("hfx-p1", "hfx-d1")}
        assert wait_until(lambda: links_of(url) == want, 30), links_of(url)
        results, changed = actions_under_load(
            c.state.router, _request, 4,
            [role_change(home, "hfx-d1", "prefill", "test: prefill pressed"),
             role_change(home, "hfx-p0", "decode", "test: decode pressed")], pause_s=3)
        out = capsys.readouterr().out
        entries = registry(url)
        links = links_of(url)
    assert "hfx-d1: decode -> prefill (test: prefill pressed)" in out
    assert len(results) > 20
    failed = incomplete(results, MAX_TOKENS)
    assert not failed, failed[:5]
    assert entries["hfx-d1"].role == common_pb2.ROLE_PREFILL and entries["hfx-d1"].role_reason == "test: prefill pressed"
    assert entries["hfx-p0"].role == common_pb2.ROLE_DECODE and entries["hfx-p0"].role_reason == "test: decode pressed"
    assert links == {("hfx-p1", "hfx-d0"), ("hfx-p1", "hfx-p0"), ("hfx-d1", "hfx-d0"), ("hfx-d1", "hfx-p0")}
    # Requests that came after the first change prefilled on hfx-d1 (its new role).
    later = [r.final.placement_reason for r in results if r.started_s > changed[0] + 1.0]
    assert any("prefill -> hfx-d1" in r for r in later), later[:5]


def test_a_restarted_worker_comes_back_in_its_current_role(tmp_path):
    home = tmp_path / "home"
    with local_cluster(home, workers=0, prefill=1, decode=2, engine="sim", policy="hfx") as c:
        url = c.state.redis_url
        assert wait_until(lambda: links_of(url) == {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-d1")}, 30), links_of(url)
        role_change(home, "hfx-d1", "prefill", "test: prefill pressed")()
        before = registry(url)["hfx-d1"]
        pid = c.worker_pid("hfx-d1")
        os.killpg(pid, signal.SIGKILL)   # a crash: no drain, no deregistration
        # The scaler restarts it (a new process on a new port) and it registers again.
        assert wait_until(lambda: c.worker_pid("hfx-d1") != pid, 60), "the scaler did not restart hfx-d1"
        assert wait_until(lambda: (e := registry(url).get("hfx-d1")) is not None
                          and e.registered_unix_s > before.registered_unix_s and e.address != before.address, 60)
        after = registry(url)["hfx-d1"]
        assert wait_until(lambda: links_of(url) == {("hfx-p0", "hfx-d0"), ("hfx-d1", "hfx-d0")}, 30), links_of(url)
        # With two idle P the scheduler takes the one whose (online-refined) model predicts the
        # earlier first token, which may be hfx-p0 every time; turned into a decode instance, it
        # leaves hfx-d1 the only P, so a split request prefills there only if it came back as one.
        role_change(home, "hfx-p0", "decode", "test: decode pressed")()
        assert wait_until(lambda: links_of(url) == {("hfx-d1", "hfx-d0"), ("hfx-d1", "hfx-p0")}, 30), links_of(url)
        results, _ = actions_under_load(c.state.router, _request, 2, [], pause_s=2)
    assert before.role == common_pb2.ROLE_PREFILL
    assert after.role == common_pb2.ROLE_PREFILL, common_pb2.Role.Name(after.role)
    assert not incomplete(results, MAX_TOKENS)
    assert any("prefill -> hfx-d1" in r.final.placement_reason for r in results), \
        [r.final.placement_reason for r in results][:5]


def _mixed_request(client: int, i: int) -> router_pb2.GenerateRequest:
    """Long prompts (split P -> D) and short ones (served whole: on a colocated instance first)."""
    req = _request(client, i)
    if i % 2:
        del req.token_ids.ids[32:]
    return req


def test_flips_with_a_colocated_instance_under_load_lose_no_request(tmp_path, capsys):
    home = tmp_path / "home"
    # The scaler's --role-changes starts the colocated worker with --kv-transfer too, so it may
    # become P or D; the scheduler runs no role loop here (only these two changes are made).
    with local_cluster(home, workers=1, prefill=1, decode=2, engine="sim", policy="hfx",
                       scaler_args=("--role-changes",)) as c:
        url = c.state.redis_url
        assert wait_until(lambda: links_of(url) == {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-d1")}, 30), links_of(url)
        results, changed = actions_under_load(
            c.state.router, _mixed_request, 4,
            [role_change(home, "hfx-w0", "decode", "test: decode pressed"),
             role_change(home, "hfx-d1", "colocated", "test: colocated pressed")], pause_s=3)
        entries = registry(url)
        links = links_of(url)
    assert "hfx-w0: colocated -> decode (test: decode pressed)" in capsys.readouterr().out
    assert len(results) > 20
    failed = incomplete(results, MAX_TOKENS)
    assert not failed, failed[:5]
    assert entries["hfx-w0"].role == common_pb2.ROLE_DECODE and entries["hfx-d1"].role == common_pb2.ROLE_COLOCATED
    assert links == {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-w0")}   # a colocated instance is linked to nothing
    between = [r.final for r in results if changed[0] + 1.0 < r.started_s < changed[1]]
    after = [r.final for r in results if r.started_s > changed[1] + 1.0]
    # hfx-w0 decodes split requests once it is a decode instance, and serves none whole as a colocated one
    assert any("decode -> hfx-w0 (" in f.placement_reason for f in between + after), \
        [(f.instance_id, f.placement_reason[-60:]) for f in between][:5]
    assert not any(f.instance_id == "hfx-w0" and "; colocated: " in f.placement_reason for f in between + after)
    # hfx-d1 serves short prompts whole as the colocated instance
    assert any(f.instance_id == "hfx-d1" and "; colocated: " in f.placement_reason for f in after), \
        [(f.instance_id, f.placement_reason) for f in after][:5]
