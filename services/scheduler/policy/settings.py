"""The one way a PolicyConfig is made, for the live scheduler (`hfx scheduler`, `hfx up`) and the
simulator (`hfx sim`, `hfx bench --sim`) alike, so both run a policy on the same knobs.

The rule, weakest first (each step overrides the ones before it):
1. PolicyConfig's defaults (services/scheduler/policy/base.py);
2. the instances' engine profile, when one is named: its latency model for instances that report
   none, its token budget per step (`chunk_tokens`, which sets prefill chunking in every
   estimate) and its KV capacity for instances that report none. The simulator's instances run
   that profile (`--profile`); the live scheduler is told it (`hfx scheduler --profile`, which
   `hfx up --engine sim` sets to its workers' `--sim-profile`);
3. the task classes: each class whose `on_miss` is `reject` joins `reject_classes`, so the policy
   rejects it when its SLO is out of reach instead of demoting it (the workload's classes in the
   simulator; the router's `--classes` table, which `hfx up` hands the scheduler too);
4. explicit settings: a YAML or JSON file of PolicyConfig fields (`--policy-config FILE`), then
   flags (`--placement`, `--pd-local-prefill`). Explicit settings always win.

Every value is checked here (`check`): a bad file or flag is an error naming the setting, before
anything starts.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import yaml

from services.common.domain import LatencyModel
from services.scheduler.policy.base import PolicyConfig

_FIELDS = {f.name: f for f in dataclasses.fields(PolicyConfig)}
_CHOICES = {"placement": ("best_fit", "spread"), "on_miss": ("best_effort", "reject")}
_AT_LEAST_ONE = {"chunk_tokens", "default_kv_capacity_tokens", "prior_output_tokens", "max_attempts_per_call"}
_LATENCY_KEYS = ("c0_ms", "c1_ms_per_prefill_token", "c2_ms_per_decode_seq", "c3_ms_per_kv_token",
                 "kv_transfer_ms_per_token")


class EngineProfile(Protocol):
    """What the rule reads of an engine profile (services/sim/profiles.py Profile has it)."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> LatencyModel: ...
    @property
    def chunk_tokens(self) -> int: ...
    @property
    def kv_capacity_tokens(self) -> int: ...


class TaskClassLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def on_miss(self) -> str: ...


def policy_config(profile: EngineProfile | None = None, classes: Iterable[TaskClassLike] = (),
                  settings: Mapping[str, Any] | None = None) -> PolicyConfig:
    """The PolicyConfig by the rule above; `settings` are the explicit ones (file, then flags,
    already merged: see `load_settings`). Raises ValueError naming a bad setting."""
    derived: dict[str, Any] = {}
    if profile is not None:
        derived.update(default_latency_model=profile.model, chunk_tokens=profile.chunk_tokens,
                       default_kv_capacity_tokens=profile.kv_capacity_tokens)
    rejecting = tuple(c.name for c in classes if c.on_miss == "reject")
    if rejecting:
        derived["reject_classes"] = rejecting
    explicit = {name: _value(name, value) for name, value in (settings or {}).items()}
    config = dataclasses.replace(PolicyConfig(), **{**derived, **explicit})
    check(config)
    return config


def load_settings(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of PolicyConfig fields, each checked: unknown names and wrong
    types are errors naming the file and the setting."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML/JSON: {err}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of policy settings (e.g. `chunk_tokens: 512`), "
                         f"got {type(doc).__name__}")
    out = {}
    for name, value in doc.items():
        try:
            out[str(name)] = _value(str(name), value)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    check(dataclasses.replace(PolicyConfig(), **out), where=str(path))
    return out


def check(config: PolicyConfig, where: str = "policy config") -> None:
    """Ranges and choices of every field; ValueError names the first bad one."""
    for name, allowed in _CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{where}: {name} must be one of {', '.join(allowed)}, not {getattr(config, name)!r}")
    for name, f in _FIELDS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {name} must be a finite number >= 0, not {value!r}")
        if name in _AT_LEAST_ONE and value < 1:
            raise ValueError(f"{where}: {name} must be >= 1, not {value!r}")
    if config.affinity_tolerance < 1.0:
        raise ValueError(f"{where}: affinity_tolerance must be >= 1 (1 = off), not {config.affinity_tolerance!r}")
    if config.lane_factor < 1.0:
        raise ValueError(f"{where}: lane_factor must be >= 1, not {config.lane_factor!r}")
    if config.kv_watermark >= 1.0:
        raise ValueError(f"{where}: kv_watermark must be below 1 (a share of KV kept free), not {config.kv_watermark!r}")
    m = config.default_latency_model
    if any(not math.isfinite(v) or v < 0 for v in (getattr(m, k) for k in _LATENCY_KEYS)):
        raise ValueError(f"{where}: default_latency_model coefficients must be finite and >= 0, not {m}")


def describe(config: PolicyConfig) -> str:
    """The settings that differ from PolicyConfig's defaults, for the scheduler's start-up log."""
    base = PolicyConfig()
    diffs = [f"{name}={getattr(config, name)}" for name in _FIELDS if getattr(config, name) != getattr(base, name)]
    return ", ".join(diffs) or "defaults"


def _value(name: str, value: Any) -> Any:
    """`value` as the type of PolicyConfig.`name`; ValueError when it is not one."""
    f = _FIELDS.get(name)
    if f is None:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(_FIELDS))}")
    default = f.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, not {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of names, not {value!r}")
        return tuple(value)
    if isinstance(default, LatencyModel):
        return _latency_model(name, value)
    raise ValueError(f"{name} cannot be set from a file")   # a field type this reader does not know yet


def _latency_model(name: str, value: Any) -> LatencyModel:
    if isinstance(value, LatencyModel):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of {', '.join(_LATENCY_KEYS)}, not {value!r}")
    unknown = set(value) - set(_LATENCY_KEYS)
    missing = set(_LATENCY_KEYS[:4]) - set(value)
    if unknown or missing:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)} "
                         f"(expected {', '.join(_LATENCY_KEYS)}; the last is optional)")
    try:
        return LatencyModel(*(float(value.get(k, 0.0)) for k in _LATENCY_KEYS))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: coefficients must be numbers, not {value!r}") from None
