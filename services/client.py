"""Client commands: `hfx generate` and `hfx status`, against the local cluster or --router."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc

from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.local.statefile import ClusterFile

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def find_router(explicit: str | None, home: Path) -> str:
    if explicit:
        return explicit
    state = ClusterFile.load(home)
    if state is None:
        raise SystemExit(f"error: no local cluster found under {home} (start one with `hfx up`, or pass --router)")
    return state.router


def build_request(args) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(
        text=args.prompt, task_class=args.task_class, tenant=args.tenant,
        sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                           ignore_eos=args.ignore_eos),
    )
    if args.seed is not None:
        req.sampling.seed = args.seed
    if args.ttft_ms is not None:
        req.slo.ttft_ms = args.ttft_ms
    if args.tpot_ms is not None:
        req.slo.tpot_ms = args.tpot_ms
    if args.priority is not None:
        req.priority = args.priority
    return req


def generate(args) -> int:
    address = find_router(args.router, args.home)
    req = build_request(args)
    text, ids, final = [], [], None
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        try:
            metadata = (("authorization", f"Bearer {args.api_key}"),) if getattr(args, "api_key", "") else ()
            for msg in stub.Generate(req, timeout=args.timeout, metadata=metadata):
                if msg.HasField("delta"):
                    ids.extend(msg.delta.token_ids)
                    text.append(msg.delta.text)
                    if not args.json:
                        print(msg.delta.text, end="", flush=True)
                else:
                    final = msg.final
        except grpc.RpcError as err:
            if not args.json:
                print()
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            retry = dict(err.trailing_metadata() or ()).get("retry-after-ms")
            if retry:
                print(f"retry after {retry} ms", file=sys.stderr)
            return EXIT_BAD_INPUT if err.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED
    if final is None:
        print("error: stream ended without a final message", file=sys.stderr)
        return EXIT_FAILED
    finish = common_pb2.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_").lower()
    if args.json:
        print(json.dumps({
            "text": "".join(text), "token_ids": ids, "ttft_ms": round(final.ttft_ms, 3),
            "tpot_ms": round(final.tpot_ms, 3), "slo_met": final.slo_met, "finish_reason": finish,
            "request_id": final.request_id, "instance_id": final.instance_id,
        }))
    else:
        print()
        print(f"--- ttft {final.ttft_ms:.1f} ms | tpot {final.tpot_ms:.1f} ms | {final.usage.completion_tokens} tokens | "
              f"slo {'met' if final.slo_met else 'MISSED'} | finish {finish} | {final.instance_id} | {final.request_id}",
              file=sys.stderr)
        if not final.slo_met:
            print(f"--- why: hfx explain {final.request_id}", file=sys.stderr)
    return 0


def status(args) -> int:
    import redis

    from services.common import store
    from services.common.keys import Keys

    state = ClusterFile.load(args.home)
    if state is None:
        print(f"no local cluster found under {args.home}", file=sys.stderr)
        return EXIT_FAILED
    client = store.connect_sync(state.redis_url)
    keys = Keys(state.redis_prefix)
    rows = []
    try:
        for iid in sorted(store.as_text(i) for i in client.smembers(keys.instances())):
            raw = client.hget(keys.instance(iid), "pb")
            if raw is None:
                continue
            inst = common_pb2.Instance.FromString(raw)
            load_raw = client.get(keys.load(iid))
            load = common_pb2.LoadReport.FromString(load_raw) if load_raw else common_pb2.LoadReport()
            steps = list(load.recent_step_ms)
            rows.append({
                "instance_id": iid, "address": inst.address, "role": common_pb2.Role.Name(inst.role).removeprefix("ROLE_").lower(),
                "engine": inst.engine, "device": inst.device, "running": load.running_requests,
                "waiting": load.waiting_requests, "kv_usage": round(load.kv_usage, 4), "draining": load.draining,
                "mean_step_ms": round(sum(steps) / len(steps), 3) if steps else None,
            })
        raw = client.get(keys.autoscale())
        autoscale = json.loads(raw) if raw else None
        raw = client.get(keys.standby())
        standby = json.loads(raw) if raw else None
    except redis.exceptions.ConnectionError as err:
        print(f"error: cannot reach redis at {state.redis_url}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"router": state.router, "instances": rows, "autoscale": autoscale, "standby": standby},
                         indent=2))
        return 0
    print(f"router {state.router}  scheduler {state.scheduler}  redis {state.redis_url}")
    print(f"{'instance':<14}{'role':<11}{'engine':<8}{'running':>8}{'waiting':>8}{'kv':>7}{'step ms':>9}  address")
    for r in rows:
        step = f"{r['mean_step_ms']:.1f}" if r["mean_step_ms"] is not None else "-"
        print(f"{r['instance_id']:<14}{r['role']:<11}{r['engine']:<8}{r['running']:>8}{r['waiting']:>8}"
              f"{r['kv_usage']:>7.1%}{step:>9}  {r['address']}{' (draining)' if r['draining'] else ''}")
    if not rows:
        print("(no instances registered)")
    if autoscale:
        print(describe_autoscale(autoscale, time.time()))
    if standby:
        print(describe_standby(standby, time.time()))
    return 0


def describe_standby(s: dict, now_s: float) -> str:
    """The scaler's standby pool: its members, their memory and cost, the last hand-outs."""
    lines = [f"standby pool: {s['ready']} ready + {s['starting']} starting of {s['size']} "
             f"({', '.join(s['members']) or 'none'}); {s['rss_bytes'] / 2**20:.0f} MiB resident = "
             f"{s['instance_equivalents']:.2f} serving instance(s) of cost (as of {now_s - s['at']:.0f}s ago)"]
    for t in s.get("taken", []):
        how = f"{t['weights_source']} in {t['load_s']:.2f}s" if t["state"] == "loaded" else t.get("error", t["state"])
        lines.append(f"  taken {t['instance_id']} {now_s - t['at']:.0f}s ago, donor {t['donor']}: {how}")
    return "\n".join(lines)


def describe_autoscale(a: dict, now_s: float) -> str:
    """Desired vs actual and the last decision with its reason (the scaler writes it each tick)."""
    actual = a.get("actual", {})
    lines = [f"autoscale ({a.get('policy')}, {a.get('actuator')}, {a.get('min')}-{a.get('max')}): desired "
             f"{a.get('desired')}, actual {actual.get('ready', 0)} ready + {actual.get('starting', 0)} starting + "
             f"{actual.get('draining', 0)} draining; {a.get('arrival_rps', 0):.2f} req/s, predicted "
             f"{a.get('predicted_rps', 0):.2f}, {a.get('capacity_rps', 0):.2f} per worker "
             f"(as of {now_s - a.get('at', now_s):.0f}s ago)",
             f"  now: {a.get('reason', '')}"]
    if a.get("roles"):   # P/D: each role within min-max, P + D at most max_total
        lines.insert(1, "  " + "; ".join(f"{role}: desired {r['desired']}, actual {r['actual']}"
                                         for role, r in a["roles"].items()) + f" (P + D <= {a.get('max_total')})")
    if a.get("paid_instances") is not None:
        lines.append(f"  paying for {a['paid_instances']:.2f} instance(s) at {a['cost_per_s']:.3g}/s; "
                     f"{a['instance_seconds']:.0f} instance-seconds so far, {a['standby_instance_seconds']:.0f} "
                     f"of them the standby pool's")
    last = a.get("last_decision")
    if last:
        lines.append(f"  last decision {last['decision_id']} ({now_s - last['at']:.0f}s ago): {last['action']} "
                     f"{last.get('instance_id', '')}: {last['reason']}")
    else:
        lines.append("  no decision yet")
    return "\n".join(lines)
