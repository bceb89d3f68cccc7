"""One config path for the policy (services/scheduler/policy/settings.py): the live scheduler's
flags and the simulator's sweep make the same PolicyConfig from the same profile, classes and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli import build_parser, parse_args
from services.commands.scheduler import policy_config_of
from services.common.domain import LatencyModel
from services.local import cluster
from services.router.config import load_classes
from services.scheduler.policy import PolicyConfig
from services.scheduler.policy.settings import describe, load_settings, policy_config
from services.sim.cli import DEFAULT_WORKLOAD, sweep_policy_config
from services.sim.profiles import get_profile
from services.sim.workload import load_workload


def write(tmp_path: Path, name: str, doc) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_the_rule_defaults_then_profile_then_classes_then_explicit_settings():
    gpu = get_profile("gpu-7b")
    wl = load_workload(DEFAULT_WORKLOAD)
    assert policy_config() == PolicyConfig()
    cfg = policy_config(gpu, wl.classes)
    assert (cfg.chunk_tokens, cfg.default_latency_model, cfg.default_kv_capacity_tokens) == (
        2048, gpu.model, gpu.kv_capacity_tokens)
    assert cfg.reject_classes == ("chat", "code")      # the workload's on_miss: reject classes
    cfg = policy_config(gpu, wl.classes, {"chunk_tokens": 256, "reject_classes": ("batch",), "placement": "best_fit"})
    assert (cfg.chunk_tokens, cfg.reject_classes, cfg.placement) == (256, ("batch",), "best_fit")
    assert cfg.default_latency_model == gpu.model       # what the settings leave alone still comes from the profile
    assert "chunk_tokens=256" in describe(cfg) and describe(PolicyConfig()) == "defaults"


def test_the_live_scheduler_and_the_simulator_make_the_same_config_from_the_same_inputs(tmp_path):
    """`hfx scheduler --profile P --classes C --policy-config F` and `hfx sim --profile P
    --policy-config F` on a workload with the same classes: one PolicyConfig."""
    wl = load_workload(DEFAULT_WORKLOAD)
    classes = write(tmp_path, "classes.yaml", {"classes": [
        {"name": c.name, "ttft_ms": 1000, "tpot_ms": 100, "priority": c.priority, "on_miss": c.on_miss}
        for c in wl.classes]})
    settings = write(tmp_path, "policy.yaml", {"defer_slack_ms": 150, "max_attempts_per_call": 16})
    live = parse_args(build_parser(), ["scheduler", "--profile", "gpu-7b", "--classes", classes,
                                       "--policy-config", settings])
    sim = parse_args(build_parser(), ["sim", "--profile", "gpu-7b", "--policy-config", settings])
    from_live = policy_config_of(live)
    assert from_live == sweep_policy_config(sim, get_profile("gpu-7b"), wl)
    assert (from_live.chunk_tokens, from_live.defer_slack_ms, from_live.reject_classes) == (2048, 150.0, ("chat", "code"))
    assert [c.name for c in load_classes(classes)] == [c.name for c in wl.classes]


def test_flags_win_over_the_file(tmp_path):
    settings = write(tmp_path, "policy.yaml", {"pd_local_prefill": False, "placement": "best_fit"})
    live = parse_args(build_parser(), ["scheduler", "--policy-config", settings, "--pd-local-prefill"])
    assert policy_config_of(live).pd_local_prefill is True
    assert policy_config_of(parse_args(build_parser(), ["scheduler", "--policy-config", settings])).pd_local_prefill is False
    sim = parse_args(build_parser(), ["sim", "--policy-config", settings, "--placement", "spread"])
    assert sweep_policy_config(sim, get_profile("cpu-tiny"), load_workload(DEFAULT_WORKLOAD)).placement == "spread"


def test_a_latency_model_can_be_given_as_a_mapping(tmp_path):
    model = {"c0_ms": 4.0, "c1_ms_per_prefill_token": 0.01, "c2_ms_per_decode_seq": 0.2, "c3_ms_per_kv_token": 0.0}
    got = load_settings(write(tmp_path, "p.yaml", {"default_latency_model": model}))
    assert got["default_latency_model"] == LatencyModel(4.0, 0.01, 0.2, 0.0, 0.0)


@pytest.mark.parametrize("doc,says", [
    ({"chunk_token": 512}, "unknown setting 'chunk_token'; known: affinity_tolerance"),
    ({"chunk_tokens": "512"}, "chunk_tokens must be an integer"),
    ({"chunk_tokens": 0}, "chunk_tokens must be >= 1"),
    ({"preempt": "yes"}, "preempt must be true or false"),
    ({"placement": "random"}, "placement must be one of best_fit, spread, not 'random'"),
    ({"on_miss": "drop"}, "on_miss must be one of best_effort, reject"),
    ({"kv_watermark": 1.5}, "kv_watermark must be below 1"),
    ({"defer_slack_ms": -1}, "defer_slack_ms must be a finite number >= 0"),
    ({"affinity_tolerance": 0.5}, "affinity_tolerance must be >= 1"),
    ({"reject_classes": "chat"}, "reject_classes must be a list of names"),
    ({"default_latency_model": {"c0_ms": 1}}, "default_latency_model: unknown keys [], missing keys"),
    ({"default_latency_model": {"c0_ms": -1, "c1_ms_per_prefill_token": 0, "c2_ms_per_decode_seq": 0,
                                "c3_ms_per_kv_token": 0}}, "coefficients must be finite and >= 0"),
    ("- chunk_tokens\n", "expected a mapping of policy settings"),
    ("chunk_tokens: [1\n", "not YAML/JSON"),
])
def test_a_bad_settings_file_is_an_error_naming_the_file_and_the_setting(tmp_path, doc, says):
    path = write(tmp_path, "bad.yaml", doc)
    with pytest.raises(ValueError) as info:
        load_settings(path)
    assert str(info.value).startswith(path) and says in str(info.value)


@pytest.mark.parametrize("cmd", ["scheduler", "up", "sim", "bench"])
def test_every_command_that_takes_a_policy_config_refuses_a_bad_one_as_a_usage_error(tmp_path, capsys, cmd):
    path = write(tmp_path, "bad.yaml", {"chunk_tokens": 0})
    with pytest.raises(SystemExit) as exited:
        parse_args(build_parser(), ["--home", str(tmp_path / "home"), cmd, "--policy-config", path])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--policy-config" in err and "chunk_tokens must be >= 1" in err


def test_hfx_up_hands_the_scheduler_the_workers_profile_its_classes_and_its_settings(tmp_path):
    opts = cluster.UpOptions(home=tmp_path, model="m", workers=1, router_port=1, redis_url=None, policy="hfx",
                             engine="sim", tracing="off", timeout_s=1, classes="c.yaml", sim_profile="gpu-7b",
                             policy_config="/abs/p.yaml")
    assert cluster._policy_flags(opts) == ["--profile", "gpu-7b", "--classes", "c.yaml", "--policy-config", "/abs/p.yaml"]
    assert cluster._worker_flags(opts)[0] == "--sim-profile=gpu-7b"
    vllm = cluster.UpOptions(home=tmp_path, model="m", workers=1, router_port=1, redis_url=None, policy="hfx",
                             engine="vllm", tracing="off", timeout_s=1, pd_local_prefill=False)
    assert cluster._policy_flags(vllm) == ["--no-pd-local-prefill"] and cluster._worker_flags(vllm) == ()
