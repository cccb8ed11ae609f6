"""Regenerate the Python protobuf / gRPC modules of proto/bbo/v1 into bbo/v1 (``make proto``).

``python -m bbo_server.protogen [--out DIR]``: DIR defaults to the repository root, so modules land
in DIR/bbo/v1/*_pb2*.py(i). The drift test generates into a temp dir and compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"


def generate(out: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on proto_dir/bbo/v1/*.proto, writing into ``out``; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(
        str(p.relative_to(proto_dir)) for p in (proto_dir / "bbo" / "v1").glob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir / 'bbo' / 'v1'}")
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return sorted((out / "bbo" / "v1").glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO, help="output root (default: the repository)")
    a = ap.parse_args(argv)
    for p in generate(a.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
