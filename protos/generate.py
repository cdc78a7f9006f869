"""Regenerate the committed gRPC stubs beside federation.proto (``make protos``).

``python -m protos.generate --check`` exits 1 when the committed stubs differ from what the installed
grpcio-tools would generate now; ``tests/unit/protos/test_stubs_fresh.py`` runs that check.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "protos/federation.proto"
GENERATED = ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency; only needed to regenerate

    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [out_root / "protos" / name for name in GENERATED]


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [f.name for f in fresh if not filecmp.cmp(f, ROOT / "protos" / f.name, shallow=False)]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run 'make protos'", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in generate(Path(tmp)):
            shutil.copyfile(f, ROOT / "protos" / f.name)
    print("regenerated " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
