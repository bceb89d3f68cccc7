"""What a placement costs the router: a real scheduler service in its own process, two idle
instances, and N sequential requests placed over the router's Connect link, one every 10 ms;
prints p50/p90 of the time from asking to having a placement, with a ticket spent when the
scheduler granted one (--tickets) or always by a place round trip (--no-tickets).

  python -m benchmarks.place_rtt --policy hfx [--no-tickets] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time

from services.common import convert, grpcutil
from services.common.domain import RequestSpec, Slo
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.router.scheduler_link import SchedulerLink


def _serve(port_q, policy: str, tickets: bool) -> None:
    import uvloop

    from services.scheduler.config import SchedulerConfig
    from services.scheduler.policy import make_policy
    from services.scheduler.server import SchedulerServicer

    async def go():
        s = SchedulerServicer(SchedulerConfig(tickets=tickets), make_policy(policy), cluster=None)
        s.state.set_instances([common_pb2.Instance(instance_id=i, address=f"127.0.0.1:{n + 1}", max_model_len=2048)
                               for n, i in enumerate(("i0", "i1"))])
        server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, s)], ["hfx.v1.Scheduler"])
        port = grpcutil.bind(server, "127.0.0.1", 0)
        await server.start()
        port_q.put(port)
        await s.round_loop()

    uvloop.run(go())


async def _client(port: int, n: int) -> tuple[list[float], int]:
    link = SchedulerLink(scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}")))
    latencies, on_tickets = [], 0
    for k in range(n):
        spec = RequestSpec(request_id=f"r{k}", prompt_tokens=100, max_tokens=50, slo=Slo(1000, 100),
                           arrival_s=time.time())
        started = time.perf_counter()
        ticket = link.take_ticket(spec, time.time())
        msg = convert.spec_to_pb(spec)
        if ticket is not None:
            msg.ticket_id = ticket.ticket_id
            link.redeemed(msg)
            instance, on_tickets = ticket.instance_id, on_tickets + 1
        else:
            instance = (await link.place(msg, 5.0)).instance_id
        latencies.append((time.perf_counter() - started) * 1000)
        link.complete(scheduler_pb2.CompleteRequest(request_id=spec.request_id, instance_id=instance,
                                                    outcome=scheduler_pb2.OUTCOME_FINISHED, output_tokens=3))
        await asyncio.sleep(0.01)
    await link.close()
    return latencies[20:], on_tickets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="hfx", help="scheduling policy (default %(default)s)")
    parser.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True,
                        help="the scheduler grants tickets (default on)")
    parser.add_argument("--requests", type=int, default=300, help="requests, the first 20 not counted (default %(default)s)")
    args = parser.parse_args(argv)
    if args.requests <= 20:
        parser.error("--requests must be > 20")
    import uvloop

    ports: mp.Queue = mp.Queue()
    server = mp.Process(target=_serve, args=(ports, args.policy, args.tickets), daemon=True)
    server.start()
    try:
        latencies, on_tickets = uvloop.run(_client(ports.get(timeout=30), args.requests))
    finally:
        server.kill()
    latencies.sort()
    print(f"policy {args.policy}, tickets {'on' if args.tickets else 'off'}: placement p50 "
          f"{statistics.median(latencies):.2f} ms, p90 {latencies[int(len(latencies) * 0.9)]:.2f} ms "
          f"({on_tickets} of {args.requests} on a ticket)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
