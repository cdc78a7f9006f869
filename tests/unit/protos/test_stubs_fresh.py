"""The committed gRPC stubs match protos/federation.proto (run `make protos` after editing the .proto)."""

from protos.generate import stale_files


def test_generated_stubs_are_fresh() -> None:
    assert stale_files() == []
