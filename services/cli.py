"""`hfx`: one command for every HFX process and tool.

  hfx up / down / status          a local cluster (Redis, router, scheduler, scaler, workers)
  hfx generate PROMPT             stream one generation through the router
  hfx router|scheduler|scaler|worker   run one service process (what `hfx up` starts)
  hfx model init                  write the default tiny model
  hfx sim / bench                 the simulator and the workload benchmark (--sim, or --target live)
  hfx profile                     profile an engine and fit its step-time model
  hfx explain REQUEST_ID          why a request missed its SLO, from its trace (--missed: all misses)
  hfx role INSTANCE ROLE          change a worker's role (colocated, prefill, decode) without restarting it
"""

from __future__ import annotations

import argparse
import logging
import sys


def _logging(args) -> None:
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def build_parser() -> argparse.ArgumentParser:
    from services.bench.cli import add_bench_command
    from services.commands import local, router, scaler, scheduler, worker
    from services.common.model import add_model_commands
    from services.explain.cli import add_parser as add_explain
    from services.local.statefile import resolve_home
    from services.role_cli import add_parser as add_role
    from services.sim.cli import add_sim_commands

    parser = argparse.ArgumentParser(prog="hfx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=resolve_home, default=resolve_home(None),
                        help="where the local cluster keeps its state and logs (default: $HFX_HOME, else ~/.hfx)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (local, router, scheduler, scaler, worker):
        module.add_parsers(sub)
    add_model_commands(sub)
    add_sim_commands(sub)
    add_bench_command(sub)
    add_explain(sub)
    add_role(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then run the command's cross-flag `check`: its complaint is a usage error (exit 2)."""
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check else None
    if problem:
        getattr(args, "parser_error", parser.error)(problem)
    return args


def _present_cluster_token(args) -> None:
    """Commands run beside a local cluster (`hfx status`, `down`, `bench`...) present its internal
    token on their calls to its services; the services `hfx up` starts have it already."""
    from services.common import internal_auth

    home = getattr(args, "home", None)
    if home:
        internal_auth.present_home_secrets(home)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    _logging(args)
    _present_cluster_token(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
