"""The scaler's donor choice: same model, serving weights, not draining, least loaded."""

from __future__ import annotations

from services.scaler.donor import DonorCandidate, choose_donor


def cand(iid: str, **kw) -> DonorCandidate:
    fields = dict(model="m", weights_address=f"127.0.0.1:{9000 + len(iid)}")
    fields.update(kw)
    return DonorCandidate(iid, **fields)


def test_least_loaded_donor_of_the_same_model_wins():
    choice = choose_donor([cand("w0", running=3), cand("w1", running=1, waiting=1), cand("w2", running=1)], "m")
    assert choice.instance_id == "w2"
    assert "least loaded of 3" in choice.reason


def test_other_models_draining_and_non_donors_are_skipped():
    candidates = [cand("a", model="other"), cand("b", draining=True), cand("c", weights_address=""),
                  cand("d", running=9)]
    assert choose_donor(candidates, "m").instance_id == "d"


def test_no_donor_means_storage_with_a_reason():
    choice = choose_donor([cand("c", weights_address=""), cand("x", model="other")], "m")
    assert choice.address == "" and choice.reason.startswith("storage: none of 1 live worker")


def test_a_worker_is_never_its_own_donor():
    assert choose_donor([cand("w0")], "m", exclude="w0").address == ""


def test_ties_break_on_kv_then_id():
    assert choose_donor([cand("b", kv_usage=0.1), cand("a", kv_usage=0.1), cand("c")], "m").instance_id == "c"
    assert choose_donor([cand("b"), cand("a")], "m").instance_id == "a"


def _servicer(d2d: bool, engine: str = "vllm"):
    from pathlib import Path

    from services.scaler.config import ScalerConfig
    from services.scaler.server import Managed, ScalerServicer

    config = ScalerConfig(model="/m", scheduler_address="127.0.0.1:1", log_dir=Path("/tmp"), engine=engine, d2d=d2d)
    return ScalerServicer(config, cluster=None), Managed(1, "hfx-w1", 0)


def test_scaler_passes_the_chosen_donor_to_a_new_worker():
    from services.common.pb.hfx.v1 import common_pb2

    servicer, new = _servicer(d2d=True)
    assert servicer._weights_flags(new) == ["--serve-weights"]  # nobody to pull from yet: storage
    servicer.registry = [
        common_pb2.Instance(instance_id="hfx-w0", model="/m", weights_address="127.0.0.1:7001",
                            load=common_pb2.LoadReport(running_requests=2)),
        common_pb2.Instance(instance_id="hfx-w2", model="/m", weights_address="127.0.0.1:7002"),
    ]
    assert servicer._weights_flags(new) == ["--serve-weights", "--weights-from", "127.0.0.1:7002"]


def test_scaler_without_d2d_adds_nothing_and_sim_workers_stream_too():
    assert _servicer(d2d=False)[0]._weights_flags(_servicer(d2d=False)[1]) == []
    # Sim workers serve and pull the real stream (their engine drops it: a SIMULATED load).
    servicer, new = _servicer(d2d=True, engine="sim")
    assert servicer._weights_flags(new) == ["--serve-weights"]


def test_a_standby_keeps_the_donor_it_mapped_ahead_while_that_one_is_a_donor():
    busy = cand("busy", running=5)
    idle = cand("idle")
    choice = choose_donor([busy, idle], "m", prepared=busy.weights_address)
    assert choice.instance_id == "busy" and "already mapped" in choice.reason
    draining = cand("busy", running=5, draining=True)
    assert choose_donor([draining, idle], "m", prepared=busy.weights_address).instance_id == "idle"
    assert choose_donor([busy, idle], "m", prepared="127.0.0.1:1").instance_id == "idle"
