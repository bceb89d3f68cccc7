"""P/D autoscaling in the simulator (services/sim/pd_scaling.py, SIMULATED): the P/D core decides
P and D counts on the virtual clock. A prompt-heavy phase (long prompts, few output tokens) must
grow P and not D; a decode-heavy phase (short prompts, long outputs) must grow D; nothing placed
is lost on the way (every served request ends with all its tokens)."""

import random

from services.common.domain import Role
from services.scaler.autoscale import AutoscaleConfig, StartKind
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim.autoscale_bench import pd_autoscaler
from services.sim.cli import DEFAULT_WORKLOAD
from services.sim.pd_scaling import PDScalingDriver
from services.sim.profiles import get_profile
from services.sim.runner import Simulation
from services.sim.scaling import ScalingSetup
from services.sim.workload import at_times, load_workload

READY = {StartKind.COLD: 10.0, StartKind.PEER: 5.0}
PROMPT_HEAVY_END_S = 120.0


def phased_requests(workload, profile):
    """20 req/s of 3,000-token prompts with 8 output tokens for 120 s (one P carries ~27k prompt
    tokens/s: ~60k tokens/s wants 3 P; 160 output tokens/s is a fraction of one D), then 10 req/s of
    50-token prompts with 400 output tokens for 180 s (4,000 output tokens/s: more than one D's ~2,000)."""
    shapes, t = [], 0.0
    for until, rate, prompt, output in ((PROMPT_HEAVY_END_S, 20.0, 3000, 8), (300.0, 10.0, 50, 400)):
        while t < until:
            shapes.append((t, prompt, output))
            t += 1.0 / rate
    return at_times(workload, shapes, random.Random(5), profile.model, profile.chunk_tokens)


def test_prompt_heavy_load_grows_prefill_then_decode_heavy_load_grows_decode():
    profile, workload = get_profile("cpu-tiny"), load_workload(DEFAULT_WORKLOAD)
    role = AutoscaleConfig(min_replicas=1, max_replicas=6, scale_down_cooldown_s=30.0, warmup_s=5.0,
                           ready_times_s=READY)
    scaler = pd_autoscaler(profile, workload, role, max_total=10)
    config = policy_config(profile, workload.classes, {"placement": "best_fit"})
    driver = PDScalingDriver(scaler, ScalingSetup(2, 1.0, READY, tick_s=5.0), config)
    requests = phased_requests(workload, profile)
    result = Simulation(make_policy("hfx", config), profile, 2, seed=1, scaling=driver,
                        roles=(Role.PREFILL, Role.DECODE)).run(requests)

    heavy_p = [(p, d) for t, p, d in driver.role_timeline if 30.0 <= t < PROMPT_HEAVY_END_S]
    assert max(p for p, _ in heavy_p) >= 2            # P grew for the long prompts
    assert max(d for _, d in heavy_p) == 1            # and D did not (8 output tokens each)
    heavy_d = [d for t, _, d in driver.role_timeline if t >= PROMPT_HEAVY_END_S + 30.0]
    assert max(heavy_d) >= 2                          # D grew for the long outputs
    # Every decision has its reason; each start took a role of the P/D cluster.
    assert driver.decisions and all(reason for _, _, reason in driver.decisions)
    served = [r for r in result.records if r.verdict in ("admit", "best_effort")]
    assert len(result.records) == len(requests) and served
    assert all(r.finish_s is not None and r.generated == r.output_tokens for r in served)


def test_autoscale_bench_runs_hfx_on_a_pd_cluster(tmp_path, capsys):
    """`hfx autoscale-bench --pd 1:1`: hfx runs P/D (both roles counted), the baseline colocated."""
    import json

    from services.cli import main

    out = tmp_path / "r.json"
    assert main(["autoscale-bench", "--pd", "1:1", "--duration-s", "120", "--peak-rps", "8", "--max-instances", "6",
                 "--autoscalers", "static", "hfx", "--cold-start-s", "10", "--json", str(out)]) == 0
    results = {r["autoscaler"]: r for r in json.loads(out.read_text())["results"]}
    assert "pd" not in results["static"] and results["hfx"]["pd"] == "1:1"
    assert results["hfx"]["peak_prefill"] >= 1 and results["hfx"]["peak_decode"] >= 1
    assert results["hfx"]["requests"] == results["static"]["requests"]
    assert "hfx ran P/D from 1:1" in capsys.readouterr().out
    assert main(["autoscale-bench", "--pd", "0:1"]) == 2
