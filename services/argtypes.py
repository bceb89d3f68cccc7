"""argparse `type=` validators shared by every `hfx` command. A bad value becomes argparse's usage
line plus `error: argument --FLAG: why` and exit code 2, while parsing, before anything starts.

Only ArgumentTypeError's message reaches the user (argparse hides ValueError's), so each
validator raises that, saying what was expected and what it got."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from collections.abc import Callable
from typing import TypeVar

MAX_PORT = 65535

_N = TypeVar("_N", int, float)
_T = TypeVar("_T")


def _number(value: str, kind: type[_N]) -> _N:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def _loaded(value: str, load: Callable[[str], _T], errors: tuple[type[Exception], ...] = (ValueError,)) -> _T:
    """load(value), its error turned into argparse's (whose message is all the user sees)."""
    try:
        return load(value)
    except errors as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(value: str) -> int:
    number = _number(value, int)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = _number(value, int)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return number


def positive_float(value: str) -> float:
    number = _number(value, float)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def non_negative_float(value: str) -> float:
    number = _number(value, float)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def port(value: str) -> int:
    """A TCP port to listen on, 1-65535."""
    number = _number(value, int)
    if not 1 <= number <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a port in 1..{MAX_PORT}, got {value}")
    return number


def port_or_zero(value: str) -> int:
    """A TCP port, or 0 (off, or a free one: the flag's help says which)."""
    return 0 if _number(value, int) == 0 else port(value)


def non_empty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def address(value: str) -> str:
    """HOST:PORT of a gRPC service."""
    host, _, number = value.rpartition(":")
    if not host or not number.isdigit() or not 1 <= int(number) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def weights_from(value: str) -> str:
    """A worker's --weights-from: "storage" or a donor's HOST:PORT."""
    if value == "storage":
        return value
    return address(value)


def existing_file(value: str) -> str:
    if not Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return value


def output_file(value: str) -> str:
    """A file to write at the end of a run: its directory must exist now, not after the run."""
    parent = Path(value).expanduser().resolve().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: directory {parent} does not exist")
    if Path(value).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; expected a file name")
    return value


def redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(f"expected redis://HOST:PORT/DB (or rediss://, unix://), got {value!r}")
    return value


def model_dir(value: str) -> str:
    """A local Hugging Face checkpoint directory, as an absolute path (children run elsewhere)."""
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{value}: not a Hugging Face checkpoint directory (no config.json)")
    return str(path.resolve())


def engine_name(value: str) -> str:
    from services.worker.engine import ENGINES

    if value not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {value!r}; choose one of {', '.join(sorted(ENGINES))}")
    return value


def worker_role(value: str):
    """--role: colocated, prefill or decode (services.common.domain.Role)."""
    from services.common.domain import Role

    try:
        return Role(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown role {value!r}; choose one of {', '.join(r.value for r in Role)}") from None


def tracing_spec(value: str) -> str:
    """The --tracing spec as text (handed on to child processes), checked here."""
    from services.common.tracing import TracingConfig

    _loaded(value, TracingConfig.parse)
    return value


def up_tracing_spec(value: str) -> str:
    """`hfx up --tracing`: also "local", the cluster's own span store (HOME/traces)."""
    return value if value == "local" else tracing_spec(value)


def tracing_config(value: str):
    """The --tracing spec parsed into a TracingConfig (services that set up tracing themselves)."""
    from services.common.tracing import TracingConfig

    return _loaded(value, TracingConfig.parse)


def target_address(value: str) -> str:
    """`hfx bench --target`: grpc://HOST:PORT, HOST:PORT or http(s)://HOST:PORT."""
    from services.bench.targets import check_address

    return _loaded(value, check_address)


def sim_profile(value: str) -> str:
    """A built-in latency profile name or a profile JSON file from `hfx profile`."""
    from services.sim.profiles import load_profile

    _loaded(value, load_profile)
    return value


def workload_file(value: str) -> str:
    """A workload YAML that loads (its trace file included)."""
    from services.sim.workload import load_workload

    _loaded(value, load_workload, (OSError, ValueError))
    return value


def policy_config_file(value: str) -> str:
    """A policy settings file (services/scheduler/policy/settings.py) whose every setting checks out."""
    from services.scheduler.policy.settings import load_settings

    _loaded(value, load_settings, (OSError, ValueError))
    return value


def classes_file(value: str) -> str:
    """A router task-class YAML that loads."""
    import yaml

    from services.router.config import load_classes

    try:
        load_classes(value)
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise argparse.ArgumentTypeError(f"{value}: {err}") from None
    return value


def device_price(value: str) -> tuple[str, float]:
    """DEVICE=PRICE: a device kind's price per instance-second, e.g. cpu=1 or gpu=12.5 (>= 0)."""
    device, sep, price = value.partition("=")
    if not sep or not device:
        raise argparse.ArgumentTypeError(f"expected DEVICE=PRICE (e.g. cpu=1.0), got {value!r}")
    number = _number(price, float)
    if number < 0:
        raise argparse.ArgumentTypeError(f"price of {device!r} must be >= 0, got {price}")
    return device, number


def duration_s(value: str) -> float:
    """A duration: a number with a unit, s, m, h or d ('90s', '5m', '2h'); a bare number is seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale is not None else text
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 5m, 2h or 1d, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive duration, got {value!r}")
    return seconds
