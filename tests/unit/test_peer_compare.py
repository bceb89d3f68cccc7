"""benchmarks.peer.compare: where each target's multi-class SLOs come from (one shared probe)."""

from pathlib import Path

from benchmarks.peer import compare


def _args(*argv: str):
    return compare.parse_args(["--multi-slo", "4", *argv])


def test_hfx_after_the_peer_takes_the_peers_probe():
    args = _args()
    assert compare.shared_probe("peer", args, Path("/out")) is None   # the peer probes itself
    assert compare.shared_probe("hfx", args, Path("/out")) == Path("/out/multi-slo-peer.json")


def test_hfx_alone_probes_itself():
    assert compare.shared_probe("hfx", _args("--targets", "hfx"), Path("/out")) is None


def test_a_given_probe_holds_both_targets_in_either_order():
    args = _args("--targets", "hfx", "peer", "--unloaded-from", "/runs/probe.json")
    assert compare.shared_probe("hfx", args, Path("/out")) == Path("/runs/probe.json")
    assert compare.shared_probe("peer", args, Path("/out")) == Path("/runs/probe.json")


def test_hfx_first_without_a_probe_is_refused_before_anything_starts(capsys):
    assert compare.main(["--targets", "hfx", "peer", "--multi-slo", "4"]) == 2
    assert "--unloaded-from" in capsys.readouterr().err
