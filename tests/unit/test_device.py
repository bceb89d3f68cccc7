"""The device seam's CPU core binding: parsing a core list, the engine environment, pinning."""

from __future__ import annotations

import os

import pytest

from services.worker.engine.device import device_environment, parse_cores, pin_cpu_cores


@pytest.mark.parametrize("spec, cores", [("0", {0}), ("2-3", {2, 3}), ("0,4-5", {0, 4, 5}), (" 1 , 3 ", {1, 3})])
def test_parse_cores(spec, cores):
    assert parse_cores(spec) == cores


@pytest.mark.parametrize("spec", ["", ",", "3-1", "a", "1-b"])
def test_bad_core_lists_are_refused(spec):
    with pytest.raises(ValueError):
        parse_cores(spec)


def test_cpu_environment_sizes_openmp_to_the_share():
    assert device_environment("cpu", cpu_cores="2-3") == {"VLLM_CPU_OMP_THREADS_BIND": "2-3", "OMP_NUM_THREADS": "2"}
    assert device_environment("cpu") == {}
    assert device_environment("cuda", cpu_cores="0") == {}


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
