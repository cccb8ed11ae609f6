"""Regenerate the Python protobuf / gRPC modules of proto/bbo/v1 into the client distribution,
clients/python/bbo_client/v1 (``make proto``); the server imports them from there too.

``python -m bbo_server.protogen [--out DIR]``: DIR defaults to clients/python/bbo_client/v1. protoc
names the modules after the .proto paths (``bbo.v1``); their imports of each other are rewritten to
``bbo_client.v1`` (the wire API, package ``bbo.v1``, is unchanged). The drift test generates into a
temp dir and compares.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
STUBS_DIR = REPO / "clients" / "python" / "bbo_client" / "v1"
PY_PACKAGE = "bbo_client.v1"
_IMPORT = re.compile(r"^(\s*)from bbo\.v1 import ", re.MULTILINE)


def generate(out: Path = STUBS_DIR, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on proto_dir/bbo/v1/*.proto and write the modules into the folder ``out``, their
    ``bbo.v1`` imports pointing at :data:`PY_PACKAGE`; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(
        str(p.relative_to(proto_dir)) for p in (proto_dir / "bbo" / "v1").glob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir / 'bbo' / 'v1'}")
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        written = []
        for src in sorted((Path(tmp) / "bbo" / "v1").glob("*_pb2*.py*")):
            text = _IMPORT.sub(rf"\1from {PY_PACKAGE} import ", src.read_text())
            dst = out / src.name
            dst.write_text(text)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=STUBS_DIR, help=f"output folder (default: {STUBS_DIR})"
    )
    a = ap.parse_args(argv)
    for p in generate(a.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
