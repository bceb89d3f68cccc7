"""Workloads: task classes with length distributions and SLO scales, and an arrival process.

YAML format (docs/SCHEDULING.md):
  classes:
    - {name: chat, weight: 0.4, priority: 1, on_miss: reject,
       prompt_tokens: {dist: lognormal, mean: 512, sigma: 0.6, max: 4096},
       output_tokens: {dist: lognormal, mean: 128, sigma: 0.5, max: 1024},
       ttft_slo_scale: 5, tpot_slo_scale: 2}
  arrival: {process: gamma, cv: 2.0}     # or {process: poisson}, or {trace: path.csv}
SLO scales multiply the instance's unloaded latency for the class's mean prompt: unloaded TTFT is
the prefill of that prompt on an empty instance, unloaded TPOT one decode step at batch 1.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from services.common.domain import LatencyModel, RequestSpec, Slo
from services.scheduler.policy.budget import prefill_ms

DISTS = ("lognormal", "uniform", "constant")
PROCESSES = ("poisson", "gamma")


@dataclass(frozen=True)
class LengthDist:
    dist: str
    mean: float
    sigma: float = 0.0
    min: int = 1
    max: int = 1 << 20

    def sample(self, rng: random.Random) -> int:
        if self.dist == "constant":
            x = self.mean
        elif self.dist == "uniform":
            x = rng.uniform(self.min, 2 * self.mean - self.min)
        else:  # lognormal with the stated mean
            x = rng.lognormvariate(math.log(self.mean) - self.sigma ** 2 / 2, self.sigma)
        return int(min(self.max, max(self.min, round(x))))


@dataclass(frozen=True)
class TaskClass:
    name: str
    weight: float
    priority: int
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    ttft_slo_scale: float
    tpot_slo_scale: float
    on_miss: str = "best_effort"

    def slo(self, model: LatencyModel, chunk_tokens: int) -> Slo:
        unloaded_ttft_ms = prefill_ms(model, self.prompt_tokens.mean, chunk_tokens)
        unloaded_tpot_ms = model.step_ms(0, 1, int(self.prompt_tokens.mean))
        return Slo(self.ttft_slo_scale * unloaded_ttft_ms, self.tpot_slo_scale * unloaded_tpot_ms)


@dataclass(frozen=True)
class Workload:
    classes: tuple[TaskClass, ...]
    process: str = "poisson"
    cv: float = 1.0
    trace: str = ""            # Azure LLM trace CSV: TIMESTAMP, ContextTokens, GeneratedTokens


@dataclass(frozen=True)
class SimRequestSpec:
    """A request as the simulator generates it: what the scheduler sees plus its true length."""

    spec: RequestSpec
    output_tokens: int


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing field {key!r}")
    return d[key]


def _number(d: dict, key: str, where: str, positive: bool = True, default: Any = None) -> float:
    value = d.get(key, default) if default is not None else _need(d, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.{key}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where}.{key}: must be > 0, got {value!r}")
    return float(value)


def _length(d: Any, where: str) -> LengthDist:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping like {{dist: lognormal, mean: 512}}, got {d!r}")
    dist = d.get("dist", "lognormal")
    if dist not in DISTS:
        raise ValueError(f"{where}.dist: {dist!r} is not one of {', '.join(DISTS)}")
    mean = _number(d, "mean", where)
    sigma = _number(d, "sigma", where, positive=False, default=0.5 if dist == "lognormal" else 0.0)
    lo = int(_number(d, "min", where, default=1))
    hi = int(_number(d, "max", where, default=max(int(mean * 8), lo)))
    if lo > hi or not lo <= mean <= hi:
        raise ValueError(f"{where}: need min <= mean <= max, got {lo} <= {mean} <= {hi}")
    return LengthDist(dist, mean, sigma, lo, hi)


def _task_class(d: Any, i: int) -> TaskClass:
    where = f"classes[{i}]"
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {d!r}")
    name = _need(d, "name", where)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: expected a non-empty string, got {name!r}")
    on_miss = d.get("on_miss", "best_effort")
    if on_miss not in ("best_effort", "reject"):
        raise ValueError(f"{where}.on_miss: must be best_effort or reject, got {on_miss!r}")
    priority = d.get("priority", 1)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"{where}.priority: expected an integer, got {priority!r}")
    return TaskClass(name, _number(d, "weight", where), priority,
                     _length(_need(d, "prompt_tokens", where), f"{where}.prompt_tokens"),
                     _length(_need(d, "output_tokens", where), f"{where}.output_tokens"),
                     _number(d, "ttft_slo_scale", where), _number(d, "tpot_slo_scale", where), on_miss)


def parse_workload(doc: Any, base_dir: Path | None = None) -> Workload:
    if not isinstance(doc, dict):
        raise ValueError(f"workload: expected a mapping with 'classes' and 'arrival', got {type(doc).__name__}")
    raw = _need(doc, "classes", "workload")
    if not isinstance(raw, list) or not raw:
        raise ValueError("workload.classes: expected a non-empty list of task classes")
    classes = tuple(_task_class(c, i) for i, c in enumerate(raw))
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"workload.classes: duplicate class names in {names}")
    arrival = doc.get("arrival", {"process": "poisson"})
    if not isinstance(arrival, dict):
        raise ValueError(f"workload.arrival: expected a mapping, got {arrival!r}")
    if "trace" in arrival:
        trace = Path(str(arrival["trace"]))
        if base_dir is not None and not trace.is_absolute():
            trace = base_dir / trace
        return Workload(classes, trace=str(trace))
    process = arrival.get("process", "poisson")
    if process not in PROCESSES:
        raise ValueError(f"workload.arrival.process: {process!r} is not one of {', '.join(PROCESSES)} (or give trace:)")
    cv = _number(arrival, "cv", "workload.arrival", default=1.0)
    return Workload(classes, process, cv)


def load_workload(path: str | Path) -> Workload:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return parse_workload(doc, path.parent)


def _gaps_s(workload: Workload, rate_rps: float, n: int, rng: random.Random) -> list[float]:
    if workload.process == "poisson" or workload.cv == 1.0:
        return [rng.expovariate(rate_rps) for _ in range(n)]
    shape = 1.0 / workload.cv ** 2     # gamma with mean 1/rate and the given coefficient of variation
    return [rng.gammavariate(shape, 1.0 / (rate_rps * shape)) for _ in range(n)]


def read_azure_trace(path: str | Path) -> list[tuple[float, int, int]]:
    """(seconds since the first row, context tokens, generated tokens) per row of an Azure LLM trace."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: trace is missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                ts = row["TIMESTAMP"].strip()
                t = float(ts) if ts.replace(".", "", 1).isdigit() else datetime.fromisoformat(ts[:26]).timestamp()
                rows.append((t, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: bad trace row {row}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: trace has no rows")
    t0 = min(r[0] for r in rows)
    return sorted((t - t0, c, g) for t, c, g in rows)


def generate(workload: Workload, rate_rps: float, requests: int, seed: int, model: LatencyModel,
             chunk_tokens: int) -> list[SimRequestSpec]:
    """Requests in arrival order. A trace is replayed at `rate_rps` (its gaps rescaled)."""
    if rate_rps <= 0 or requests <= 0:
        raise ValueError(f"rate and requests must be > 0, got rate {rate_rps}, requests {requests}")
    rng = random.Random(seed)
    if workload.trace:
        rows = read_azure_trace(workload.trace)[:requests]
        span_s = rows[-1][0] or 1.0
        scale = (len(rows) / rate_rps) / span_s if len(rows) > 1 else 1.0
        shapes = [(t * scale, c, g) for t, c, g in rows]
    else:
        t, shapes = 0.0, []
        for gap in _gaps_s(workload, rate_rps, requests, rng):
            t += gap
            shapes.append((t, -1, -1))
    return at_times(workload, shapes, rng, model, chunk_tokens)


def at_times(workload: Workload, shapes: list[tuple[float, int, int]], rng: random.Random, model: LatencyModel,
             chunk_tokens: int) -> list[SimRequestSpec]:
    """Requests arriving at the given times, each of a class drawn by weight; a shape's lengths
    (> 0, from a trace) are kept, others drawn from the class's distributions."""
    slos = {c.name: c.slo(model, chunk_tokens) for c in workload.classes}
    weights = [c.weight for c in workload.classes]
    out = []
    for i, (t_s, prompt, output) in enumerate(shapes):
        cls = rng.choices(workload.classes, weights)[0]
        prompt = prompt if prompt > 0 else cls.prompt_tokens.sample(rng)
        output = output if output > 0 else cls.output_tokens.sample(rng)
        max_tokens = max(output, cls.output_tokens.max)
        spec = RequestSpec(f"r{i:06d}", prompt, max_tokens, slos[cls.name], cls.priority, cls.name, arrival_s=t_s)
        out.append(SimRequestSpec(spec, output))
    return out


def as_live(requests: list[SimRequestSpec], max_model_len: int) -> list[SimRequestSpec]:
    """Requests as a live client sends them: it asks for exactly its output length (max_tokens =
    output, ignore_eos), so the scheduler sees the true length; prompt + output fit the context
    (output at most half of it, the prompt clipped to the rest). `hfx sim --max-model-len` applies
    the same, so the simulator and a live run see the same requests."""
    if max_model_len <= 1:
        raise ValueError(f"max_model_len must be > 1, got {max_model_len}")
    out = []
    for r in requests:
        output = max(1, min(r.output_tokens, max_model_len // 2))
        prompt = max(1, min(r.spec.prompt_tokens, max_model_len - output - 1))
        out.append(SimRequestSpec(replace(r.spec, prompt_tokens=prompt, max_tokens=output), output))
    return out
