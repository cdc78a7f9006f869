"""The on-disk format of an audit log (one canonical JSON object per line, hash-chained and signed)
and its reader/verifier.

Three kinds of entry, all with ``index``, ``time_ms`` (UTC, milliseconds since the epoch), ``kind``,
``prev`` (hash of the previous entry), ``hash`` and ``sig``:

- ``genesis`` (index 0 only): ``side``, ``party``, ``public_key`` (raw Ed25519, base64),
  ``software_version``, ``format``;
- ``message``: ``direction`` (in/out), ``peer``, ``type`` (protobuf full name), ``sha256`` and
  ``bytes`` (base64 of the deterministic serialization);
- ``recovered``: ``dropped_bytes`` cut from a partial last line after a crash.

``hash`` is the SHA-256 of the canonical JSON (sorted keys, compact, ASCII) of the entry without
``hash`` and ``sig``; ``sig`` is the Ed25519 signature of the 32 hash bytes. A whole line must be the
canonical JSON of its object, so no byte can change without changing what is hashed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.errors import AuditError, AuditVerificationError
from protos.views import IDENT_PATTERN

__all__ = [
    "FORMAT_VERSION",
    "GENESIS_PREV",
    "AuditReading",
    "Entry",
    "EntryProblem",
    "canonical_json",
    "check_signature",
    "entry_hash",
    "head_path",
    "head_payload",
    "key_fingerprint",
    "load_signing_key",
    "load_verify_key",
    "parse_entry",
    "public_key_b64",
    "read_head",
    "read_lines",
    "read_log",
    "verify",
    "VerifyReport",
]

FORMAT_VERSION = 1
GENESIS_PREV = "0" * 64
_HEX64 = r"[0-9a-f]{64}"
_TYPE_NAME = r"[A-Za-z0-9_.]{1,128}"


class EntryProblem(Exception):
    """Why one line is not a valid entry; the reader turns it into an AuditVerificationError."""


@dataclass(frozen=True)
class Entry:
    """One parsed line. Fields that do not belong to an entry's kind keep their empty default."""

    index: int
    time_ms: int
    kind: str
    prev: str
    hash: str
    sig: bytes
    side: str = ""
    party: str = ""
    public_key: bytes = b""
    software_version: str = ""
    direction: str = ""
    peer: str = ""
    msg_type: str = ""
    sha256: str = ""
    payload: bytes = b""
    dropped_bytes: int = 0
    ref: int = -1
    status: str = ""


def canonical_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(body: dict[str, Any]) -> str:
    """Hash of an entry's content (everything but ``hash`` and ``sig``)."""
    content = {k: v for k, v in body.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(content).encode("ascii")).hexdigest()


def head_payload(index: int, hash_hex: str) -> bytes:
    # Domain-separated so that an entry signature can never pass as a head signature.
    return f"autodp-audit-head:{index}:{hash_hex}".encode("ascii")


def check_signature(key: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


# ---------------------------------------------------------------- field checks

def _int(v: Any) -> bool:
    return type(v) is int and v >= 0


def _matches(pattern: str) -> Callable[[Any], bool]:
    rx = re.compile(pattern)
    return lambda v: isinstance(v, str) and rx.fullmatch(v) is not None


_B64 = r"(?:[A-Za-z0-9+/]{4})*"
_COMMON: dict[str, Callable[[Any], bool]] = {
    "index": _int,
    "time_ms": _int,
    "kind": lambda v: v in ("genesis", "message", "recovered", "undelivered"),
    "prev": _matches(_HEX64),
    "hash": _matches(_HEX64),
    "sig": _matches(r"[A-Za-z0-9+/]{86}=="),  # 64 bytes
}
_BY_KIND: dict[str, dict[str, Callable[[Any], bool]]] = {
    "genesis": {
        "side": lambda v: v in ("site", "coordinator"),
        "party": _matches(IDENT_PATTERN),
        "public_key": _matches(r"[A-Za-z0-9+/]{43}="),  # 32 bytes
        "software_version": _matches(IDENT_PATTERN),
        "format": lambda v: v == FORMAT_VERSION,
    },
    "message": {
        "direction": lambda v: v in ("in", "out"),
        "peer": _matches(IDENT_PATTERN),
        "type": _matches(_TYPE_NAME),
        "sha256": _matches(_HEX64),
        "bytes": _matches(_B64 + r"(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"),
    },
    "recovered": {"dropped_bytes": lambda v: _int(v) and v > 0},
    # a message logged as sent whose call then failed: 'ref' is that message's entry index
    "undelivered": {"ref": _int, "sha256": _matches(_HEX64), "status": _matches(r"[A-Z_]{1,32}")},
}
_SCHEMAS = {kind: {**_COMMON, **fields} for kind, fields in _BY_KIND.items()}


def _b64(v: Any) -> bytes:
    # Only called on values the schema matched, so this cannot fail.
    return base64.b64decode(v) if isinstance(v, str) else b""


def _canonical_b64(v: str) -> bool:
    # The last character before '=' padding carries unused bits: without this, an edit there decodes to the
    # same bytes. It matters for signatures, which the entry hash does not cover.
    return base64.b64encode(_b64(v)).decode("ascii") == v


def parse_entry(line: bytes) -> Entry:
    """Parse and check one line (without its newline) on its own: form, fields, hash and payload
    digest. Chain links and signatures need context and are checked by the reader.

    Raises EntryProblem naming the field or the check, never echoing content.
    """
    try:
        text = line.decode("ascii")
        obj = json.loads(text)
        canonical = canonical_json(obj) if isinstance(obj, dict) else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EntryProblem("not a valid JSON line (edited or damaged)") from None
    if canonical is None:
        raise EntryProblem("not a JSON object (edited or damaged)")
    if canonical != text:
        raise EntryProblem("line is not in canonical form (edited)")
    kind = obj.get("kind")
    schema = _SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None or obj.keys() != schema.keys():
        raise EntryProblem("unexpected or missing fields (edited)")
    for name, ok in schema.items():
        if not ok(obj[name]):
            raise EntryProblem(f"field '{name}' is malformed (edited)")
    if not _canonical_b64(obj["sig"]):
        raise EntryProblem("field 'sig' is not in canonical base64 (edited)")
    if entry_hash(obj) != obj["hash"]:
        raise EntryProblem("hash does not match the entry's content (edited)")
    payload = _b64(obj.get("bytes"))
    if kind == "message" and hashlib.sha256(payload).hexdigest() != obj["sha256"]:
        raise EntryProblem("message sha256 does not match its stored bytes (edited)")
    return Entry(
        index=obj["index"], time_ms=obj["time_ms"], kind=kind, prev=obj["prev"], hash=obj["hash"],
        sig=_b64(obj["sig"]), side=obj.get("side", ""), party=obj.get("party", ""),
        public_key=_b64(obj.get("public_key")), software_version=obj.get("software_version", ""),
        direction=obj.get("direction", ""), peer=obj.get("peer", ""), msg_type=obj.get("type", ""),
        sha256=obj.get("sha256", ""), payload=payload, dropped_bytes=obj.get("dropped_bytes", 0),
        ref=obj.get("ref", -1), status=obj.get("status", ""),
    )


def head_path(log: Path) -> Path:
    return Path(log).with_name(Path(log).name + ".head")


def read_head(path: Path, key: Ed25519PublicKey) -> tuple[int, str] | None:
    """(index, hash) named by a head file, None when it does not exist; EntryProblem when it is
    damaged or not signed by ``key``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EntryProblem(f"head file {path.name} cannot be read: {e.strerror}") from None
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        obj = None
    if (not isinstance(obj, dict) or set(obj) != {"index", "hash", "sig"} or not _int(obj["index"])
            or not _COMMON["hash"](obj["hash"]) or not _COMMON["sig"](obj["sig"])
            or raw != (canonical_json(obj) + "\n").encode("ascii") or not _canonical_b64(obj["sig"])):
        raise EntryProblem(f"head file {path.name} is damaged (edited)")
    if not check_signature(key, _b64(obj["sig"]), head_payload(obj["index"], obj["hash"])):
        raise EntryProblem(f"head file {path.name} signature does not verify (edited or another key)")
    return obj["index"], obj["hash"]


# ---------------------------------------------------------------- keys

def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise AuditError(f"{what} file {path} not found") from None
    except OSError as e:
        raise AuditError(f"{what} file {path} cannot be read: {e.strerror}") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS8 PEM Ed25519 private key (as written by ``autodp certs``)."""
    data = _read_key_file(path, "audit signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"audit signing key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"audit signing key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM SubjectPublicKeyInfo Ed25519 public key (the pinned key of a party)."""
    data = _read_key_file(path, "audit public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"audit public key file {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"audit public key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


# ---------------------------------------------------------------- reading and verifying

@dataclass(frozen=True)
class VerifyReport:
    """What a verified log says about itself."""

    path: Path
    entries: int
    messages: int
    recovered: int  # crash recoveries noted in the log
    party: str
    side: str
    key_fingerprint: str
    pinned: bool  # False: the key was taken from the log's own genesis entry
    software_version: str
    first_time_ms: int
    last_time_ms: int


@dataclass(frozen=True)
class AuditReading:
    """The verified prefix of a log, and the first problem after it (None when the log verifies).
    ``report`` describes the prefix; it is None only when the genesis entry itself is bad."""

    entries: tuple[Entry, ...]
    report: VerifyReport | None
    error: AuditVerificationError | None


def _report(path: Path, entries: list[Entry], key: Ed25519PublicKey, pinned: bool, messages: int,
            recovered: int) -> VerifyReport:
    g = entries[0]
    return VerifyReport(
        path=path, entries=len(entries), messages=messages, recovered=recovered, party=g.party, side=g.side,
        key_fingerprint=key_fingerprint(key), pinned=pinned, software_version=g.software_version,
        first_time_ms=g.time_ms, last_time_ms=entries[-1].time_ms)


def _check_chain(line: bytes, i: int, prev: str, key: Ed25519PublicKey | None,
                 pinned: Ed25519PublicKey | None) -> tuple[Entry, Ed25519PublicKey]:
    if not line.endswith(b"\n"):
        raise EntryProblem("incomplete last line (a crash mid-write; reopening the log recovers it)")
    e = parse_entry(line[:-1])
    if e.index != i:
        raise EntryProblem(f"index {e.index} where {i} was expected (entries deleted, inserted or reordered)")
    if e.prev != prev:
        raise EntryProblem("does not link to the previous entry (entries deleted or reordered)")
    if i == 0:
        if e.kind != "genesis":
            raise EntryProblem("the first entry is not a genesis entry")
        try:
            key = Ed25519PublicKey.from_public_bytes(e.public_key)
        except ValueError:
            raise EntryProblem("field 'public_key' is not an Ed25519 key (edited)") from None
    elif e.kind == "genesis":
        raise EntryProblem("a genesis entry after the first line")
    if e.kind == "undelivered" and e.ref >= i:
        raise EntryProblem("an undelivered marker must point back to an earlier entry")
    assert key is not None  # set by the genesis entry, which every later entry follows
    if not check_signature(key, e.sig, bytes.fromhex(e.hash)):
        raise EntryProblem("signature does not verify")
    if i == 0 and pinned is not None and public_key_b64(pinned) != public_key_b64(key):
        raise EntryProblem(f"signed with key {key_fingerprint(key)}, not the pinned key "
                           f"{key_fingerprint(pinned)}")
    return e, key


def _check_head(path: Path, entries: list[Entry], key: Ed25519PublicKey) -> None:
    hp = head_path(path)
    try:
        head = read_head(hp, key)
    except EntryProblem as p:
        raise AuditVerificationError(str(p)) from None
    if head is None:
        raise AuditVerificationError(
            f"head file {hp.name} is missing: entries cut off the end would go unnoticed (truncation)")
    last = entries[-1].index
    index, hash_hex = head
    if index > last:
        raise AuditVerificationError(
            f"entry {last + 1}: missing; the signed head names entry {index} but the log ends at entry "
            f"{last} (truncation)", last + 1)
    if entries[index].hash != hash_hex:
        raise AuditVerificationError(
            f"entry {index}: differs from the entry the signed head names (replaced)", index)
    if index < last:
        raise AuditVerificationError(
            f"entry {index + 1}: past the signed head (entry {index}); a crash before the head was "
            "updated, or appended afterwards; reopening the log after a crash repairs the head", index + 1)


def read_log(path: Path, public_key: Ed25519PublicKey | None = None) -> AuditReading:
    """Read and check a log line by line, stopping at the first bad entry.

    Raises AuditError only when the file cannot be read at all; every problem with its content is
    returned as ``AuditReading.error``.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return read_lines(path, f, public_key)
    except FileNotFoundError:
        raise AuditError(f"audit log {path} not found") from None
    except IsADirectoryError:
        raise AuditError(f"audit log {path} is a directory") from None
    except OSError as e:
        raise AuditError(f"audit log {path} cannot be read: {e.strerror}") from None


def read_lines(path: Path, lines: Iterable[bytes], public_key: Ed25519PublicKey | None = None, *,
               verified: AuditReading | None = None) -> AuditReading:
    """:func:`read_log` over lines the caller supplies (each with its newline, as a binary file yields them);
    the head file is the one beside ``path``.

    ``verified``: an earlier, error-free reading of the same log (or of its first entries, its report
    counting just those); ``lines`` continue it (their first line is entry ``len(verified.entries)``) and
    only they, and the head, are checked. So re-checking a grown log, or many edited copies of one log,
    costs what the new lines cost. With ``public_key``, the earlier reading's key must be the pinned one.
    """
    path = Path(path)
    entries: list[Entry] = []
    key: Ed25519PublicKey | None = None
    messages = recovered = 0
    if verified is not None and verified.entries:
        if verified.error is not None or verified.report is None:
            raise AuditError("a reading with an error cannot be continued")
        entries = list(verified.entries)
        messages, recovered = verified.report.messages, verified.report.recovered
        key = Ed25519PublicKey.from_public_bytes(entries[0].public_key)
        if public_key is not None and public_key_b64(public_key) != public_key_b64(key):
            return AuditReading((), None, AuditVerificationError(
                f"entry 0 (line 1): signed with key {key_fingerprint(key)}, not the pinned key "
                f"{key_fingerprint(public_key)}", 0))
    error: AuditVerificationError | None = None
    for i, line in enumerate(lines, start=len(entries)):
        try:
            entry, key = _check_chain(line, i, entries[-1].hash if entries else GENESIS_PREV, key, public_key)
        except EntryProblem as p:
            error = AuditVerificationError(f"entry {i} (line {i + 1}): {p}", i)
            break
        entries.append(entry)
        messages += entry.kind == "message"
        recovered += entry.kind == "recovered"
    if key is None:
        error = error or AuditVerificationError("entry 0 (line 1): the log is empty (no genesis entry)", 0)
        return AuditReading((), None, error)
    if error is None:
        try:
            _check_head(path, entries, key)
        except AuditVerificationError as e:
            error = e
    report = _report(path, entries, key, public_key is not None, messages, recovered)
    return AuditReading(tuple(entries), report, error)


def verify(path: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Verify a whole log and its head file. Without ``public_key`` the genesis key is trusted, which
    the report says (``pinned=False``). Raises AuditVerificationError naming the first bad entry."""
    reading = read_log(path, public_key)
    if reading.error is not None:
        raise reading.error
    assert reading.report is not None  # read_log always reports a log without error
    return reading.report
