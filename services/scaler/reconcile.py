"""Pure reconciliation: the actions that bring the managed workers to the desired count."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    running: bool        # a process exists for it (starting or ready)
    exited_at_s: float | None = None
    restarts: int = 0


@dataclass(frozen=True)
class Actions:
    start: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    reason: str = ""


def _plan(wanted: list[int], slots: list[WorkerSlot], now_s: float,
          restart_backoff_s: float) -> tuple[list[int], list[int], list[int]]:
    """(start, waiting for backoff, stop): start wanted slots that are missing or crashed (after
    an exponential backoff), stop running slots not wanted (highest index first)."""
    by_index = {s.index: s for s in slots}
    start, waiting = [], []
    for i in wanted:
        slot = by_index.get(i)
        if slot is None:
            start.append(i)
        elif not slot.running:
            backoff = restart_backoff_s * (2 ** min(slot.restarts, 5))
            if slot.exited_at_s is None or now_s - slot.exited_at_s >= backoff:
                start.append(i)
            else:
                waiting.append(i)
    keep = set(wanted)
    stop = sorted((s.index for s in slots if s.index not in keep and s.running), reverse=True)
    return start, waiting, stop


def reconcile(desired: int, slots: list[WorkerSlot], now_s: float, restart_backoff_s: float = 2.0) -> Actions:
    """Start missing or crashed slots (after a backoff), stop the highest indices beyond `desired`.

    Crashed workers are restarted in place (same index, same instance id) so the scheduler's and
    Redis's view stays stable.
    """
    start, waiting, stop = _plan(list(range(desired)), slots, now_s, restart_backoff_s)
    parts = []
    if start:
        parts.append(f"start {start} to reach {desired}")
    if waiting:
        parts.append(f"{waiting} crashed, restarting after backoff")
    if stop:
        parts.append(f"stop {stop} above {desired}")
    return Actions(tuple(start), tuple(stop), "; ".join(parts) or f"at desired {desired}")


def reconcile_set(wanted: set[int], slots: list[WorkerSlot], now_s: float, restart_backoff_s: float = 2.0) -> Actions:
    """As `reconcile`, for an autoscaled pool where any slot may be retired: start wanted slots
    that are missing or crashed (after the same backoff), stop running slots no longer wanted
    (the autoscaler drained them first)."""
    start, waiting, stop = _plan(sorted(wanted), slots, now_s, restart_backoff_s)
    parts = []
    if start:
        parts.append(f"start {start}")
    if waiting:
        parts.append(f"{waiting} crashed, restarting after backoff")
    if stop:
        parts.append(f"stop retired {stop}")
    return Actions(tuple(start), tuple(stop), "; ".join(parts) or f"at wanted {sorted(wanted)}")


# Worker slots of each role live in their own index range, so one pool's reconcile never stops
# another's workers: colocated 0.., prefill 1000.., decode 2000...
POOL_STRIDE = 1000
POOLS = ("colocated", "prefill", "decode")   # Role values, in index-range order
ID_LETTER = {"colocated": "w", "prefill": "p", "decode": "d"}


def pool_of(index: int) -> str:
    return POOLS[index // POOL_STRIDE]


def pool_slots(role: str, count: int) -> set[int]:
    base = POOLS.index(role) * POOL_STRIDE
    return set(range(base, base + count))


def slot_name(cluster: str, index: int) -> str:
    """The instance id of a slot: hfx-w0 (colocated), hfx-p0 (prefill), hfx-d0 (decode)."""
    return f"{cluster}-{ID_LETTER[pool_of(index)]}{index % POOL_STRIDE}"


def cpu_share(index: int, replicas: int, cores: list[int]) -> str:
    """The cores worker `index` of `replicas` gets, in vLLM's list syntax ("2" or "2,3").

    Engines on one machine must not share cores: each vLLM CPU engine spins its OpenMP threads
    on the cores it binds, so two on the same cores slow each other severalfold, and so does
    anything else on them. With more cores than workers the lowest core is left to the control
    plane (router, scheduler, Redis, the workers' own gRPC and detokenising threads): on 2 cores,
    one worker under fcfs at 12 req/s then had TPOT p50 19.3 instead of 27.7 ms and mean E2E
    2424 instead of 3404 ms (BENCHMARKS.md), though an idle step is slower on one core. The rest is split into contiguous chunks (the remainder to the lowest
    indices); more workers than cores share core i mod n. A worker keeps the share it started
    with when the replica count changes later.
    """
    if not cores:
        return ""
    ordered = sorted(cores)
    if len(ordered) > max(1, replicas):
        ordered = ordered[1:]
    n = len(ordered)
    if replicas >= n:
        return str(ordered[index % n])
    size, extra = divmod(n, replicas)
    begin = index * size + min(index, extra)
    return ",".join(str(c) for c in ordered[begin:begin + size + (1 if index < extra else 0)])


def slot_index(cluster: str, instance_id: str) -> int | None:
    """The slot whose instance id (slot_name) is `instance_id`, or None if it names no slot of `cluster`."""
    prefix = f"{cluster}-"
    if not instance_id.startswith(prefix) or len(instance_id) < len(prefix) + 2:
        return None
    letter, number = instance_id[len(prefix)], instance_id[len(prefix) + 1:]
    pool = next((p for p, l in ID_LETTER.items() if l == letter), None)
    if pool is None or not number.isdigit() or int(number) >= POOL_STRIDE or str(int(number)) != number:
        return None
    return POOLS.index(pool) * POOL_STRIDE + int(number)
