"""Regenerates the Python stubs in services/common/pb from protos/ (one command: `make protos`).

`--check` regenerates into a scratch folder and fails when the committed stubs differ, so CI
catches stubs that are stale against their .proto files.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
OUT = REPO / "services" / "common" / "pb"
# grpc_tools writes `from hfx.v1 import x_pb2`; our stubs live inside the services package.
_IMPORT = re.compile(r"^from hfx\.v1 import", re.MULTILINE)
_FIXED_IMPORT = "from services.common.pb.hfx.v1 import"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here: only this dev tool needs grpcio-tools

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out.rglob("*") if p.suffix in {".py", ".pyi"})
    for path in written:
        path.write_text(_IMPORT.sub(_FIXED_IMPORT, path.read_text()))
    for pkg in {p.parent for p in written} | {out / "hfx"}:
        (pkg / "__init__.py").touch()
    (out / "__init__.py").write_text('"""Generated from protos/ by `make protos`; do not edit."""\n')
    return written


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _tree(fresh), _tree(OUT)
        stale = sorted(want ^ have)
        stale += sorted(f for f in want & have if not filecmp.cmp(fresh / f, OUT / f, shallow=False))
    if stale:
        print("stale generated stubs (run `make protos`):", *stale, sep="\n  ")
        return 1
    print(f"generated stubs are up to date ({len(want)} files)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    files = generate(OUT)
    print(f"wrote {len(files)} files under {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
