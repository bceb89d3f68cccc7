"""The device seam's CPU core binding: parsing a core list, the engine environment, pinning."""

from __future__ import annotations

import os

import pytest

from services.worker.engine.device import device_environment, parse_cores, pin_cpu_cores
from services.worker.engine.vllm_engine import VllmEngineConfig, engine_environment
from services.worker.config import WorkerConfig


@pytest.mark.parametrize("spec, cores", [("0", {0}), ("2-3", {2, 3}), ("0,4-5", {0, 4, 5}), (" 1 , 3 ", {1, 3})])
def test_parse_cores(spec, cores):
    assert parse_cores(spec) == cores


@pytest.mark.parametrize("spec", ["", ",", "3-1", "a", "1-b"])
def test_bad_core_lists_are_refused(spec):
    with pytest.raises(ValueError):
        parse_cores(spec)


def test_cpu_environment_sizes_openmp_to_the_share():
    assert device_environment("cpu", cpu_cores="2-3", huge_pages=False) == {
        "VLLM_CPU_OMP_THREADS_BIND": "2-3", "OMP_NUM_THREADS": "2"}
    assert device_environment("cpu", huge_pages=False) == {}
    assert device_environment("cuda", cpu_cores="0") == {}


def test_huge_pages_on_advises_torch_and_glibc_for_the_engine():
    env = device_environment("cpu", cpu_cores="1", huge_pages=True, inherited={})
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "1", "OMP_NUM_THREADS": "1",
                   "THP_MEM_ALLOC_ENABLE": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_huge_pages_off_or_off_cpu_sets_neither():
    for env in (device_environment("cpu", huge_pages=False, inherited={}),
                device_environment("cuda", huge_pages=True, inherited={}),
                device_environment("npu", huge_pages=True, inherited={})):
        assert "THP_MEM_ALLOC_ENABLE" not in env and "GLIBC_TUNABLES" not in env


def test_huge_pages_keep_the_tunables_already_set():
    # Other glibc tunables ride along; an explicit hugetlb choice (0 = off, 2 = hugetlbfs) wins.
    env = device_environment("cpu", huge_pages=True, inherited={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    env = device_environment("cpu", huge_pages=True, inherited={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
                                                                 "THP_MEM_ALLOC_ENABLE": "0"})
    assert env == {"THP_MEM_ALLOC_ENABLE": "0"}


def test_the_engine_environment_carries_huge_pages_only_when_on():
    # The worker's flag -> its engine config -> the environment vLLM's engine core inherits.
    for on in (True, False):
        config = VllmEngineConfig.from_settings(WorkerConfig(model="m", instance_id="w", cpu_cores="0",
                                                             cpu_huge_pages=on))
        env = engine_environment(config, inherited={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
        assert ("THP_MEM_ALLOC_ENABLE" in env) is on
        assert ("GLIBC_TUNABLES" in env) is on
        assert env["OMP_NUM_THREADS"] == "1"
        if on:
            assert env["GLIBC_TUNABLES"].split(":") == ["glibc.malloc.arena_max=2", "glibc.malloc.hugetlb=1"]


def test_pin_binds_this_process_and_nothing_off_cpu():
    before = os.sched_getaffinity(0)
    one = min(before)
    try:
        assert pin_cpu_cores("cpu", str(one)) == {one}
        assert os.sched_getaffinity(0) == {one}
    finally:
        os.sched_setaffinity(0, before)
    assert pin_cpu_cores("cuda", "0") is None and pin_cpu_cores("cpu", "") is None
    assert os.sched_getaffinity(0) == before


def test_huge_pages_by_default_only_where_the_engine_reloads_its_weights():
    def env(**settings):
        config = VllmEngineConfig.from_settings(WorkerConfig(model="m", instance_id="w", **settings))
        return engine_environment(config, inherited={})

    assert "THP_MEM_ALLOC_ENABLE" in env(standby=True) and "GLIBC_TUNABLES" in env(weights_from="127.0.0.1:1")
    assert "THP_MEM_ALLOC_ENABLE" not in env() and "GLIBC_TUNABLES" not in env()
    assert "THP_MEM_ALLOC_ENABLE" not in env(standby=True, cpu_huge_pages=False)
    assert "THP_MEM_ALLOC_ENABLE" in env(cpu_huge_pages=True)


def test_vllm_runs_allow_amx_in_its_processes_as_a_general_plugin():
    """vLLM calls each `vllm.general_plugins` entry point in its engine and worker processes;
    HFX's must resolve to device.allow_amx (the installed metadata comes from pyproject.toml)."""
    from importlib.metadata import entry_points

    from services.worker.engine import device

    plugins = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert "hfx_allow_amx" in plugins
    assert plugins["hfx_allow_amx"].load() is device.allow_amx


def test_allow_amx_never_raises(monkeypatch):
    """vLLM does not catch what a general plugin raises: a failing probe is logged, not raised."""
    import torch

    from services.worker.engine import device

    def broken() -> bool:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken)
    device.allow_amx()
