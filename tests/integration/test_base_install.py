"""`pip install .` without extras, in a clean virtual environment (no system site packages, no
torch, no vLLM): the router, scheduler, scaler and worker modules import, the router tokenises,
and `hfx sim` runs (issue 18). pip takes packages from this machine's configured indexes and wheel
folders; the install takes about 2 minutes here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.model import ensure_default_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib.util, sys
import services.router.server, services.router.http, services.router.core, services.scheduler.server, services.scheduler.serve
import services.scaler.server, services.scaler.serve, services.worker.server, services.local.cluster, services.bench.cli, services.cli
from services.router.tokenizer import Tokenizer
assert services.cli.__file__.startswith(sys.prefix), services.cli.__file__
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("vllm") is None
print("ids", Tokenizer.load(sys.argv[1]).encode("Once upon a time"))
"""


def test_a_base_install_runs_the_router_modules_and_the_simulator(tmp_path):
    model = str(ensure_default_model())  # built here (needs torch); the base install only reads it
    src = tmp_path / "src"               # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "services", src / "services", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()

    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(src)], capture_output=True,
                             text=True, timeout=540, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-4000:]

    check = subprocess.run([str(python), "-c", CHECK, model], capture_output=True, text=True, timeout=120,
                           env=env, cwd=tmp_path)
    assert check.returncode == 0 and "ids [" in check.stdout, check.stderr[-4000:]

    sim = subprocess.run([str(venv / "bin" / "hfx"), "sim", "--requests", "50", "--instances", "2", "--quiet"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr[-4000:]
    assert "engine: sim (simulated)" in sim.stdout and "hfx " in sim.stdout
