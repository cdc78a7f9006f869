"""Regenerate the committed stubs beside federation.proto (gRPC, typed) and federated_training.proto (messages
only: the federated-training audit records) with ``make protos``.

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
# proto -> (with .pyi and gRPC stubs?, files generated)
PROTOS = {
    "protos/federation.proto": (True, ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")),
    "protos/federated_training.proto": (False, ("federated_training_pb2.py",)),
}
GENERATED = tuple(name for _, names in PROTOS.values() for name in names)


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency; only needed to regenerate

    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    for proto, (full, _) in PROTOS.items():
        args = ["protoc", f"-I{ROOT}", f"--python_out={out_root}"]
        if full:
            args += [f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
        if protoc.main([*args, str(ROOT / proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")
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
