"""``autodp audit``: verify a party's audit log, show it in plain words, cross-check two logs.

Exit codes: 0 ok, 1 the check failed, 2 bad input (a missing file, an unreadable key).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message

from protos import federation_pb2 as pb
from protos.audit import (
    AuditReading,
    Entry,
    cross_check,
    load_verify_key,
    read_log,
    verify,
)
from protos.errors import AuditError, AuditVerificationError, MalformedMessage
from protos.serde import decode, from_pb
from protos.views import (
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    Poll,
    PollReply,
    ResultAck,
    ResultReport,
    Strategy,
    Task,
)

__all__ = ["app", "describe_entry", "describe_view"]

# Same values as protos.cli, which imports this module (so it cannot be imported from here).
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(help="Verify a party's audit log, show it in plain words, cross-check a site's log against "
                  "the coordinator's. Exit codes: 0 ok, 1 the check failed, 2 bad input.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

LogArg = Annotated[Path, typer.Argument(help="Audit log file (JSON lines; its head file sits beside it).")]


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _key(path: Path | None) -> Ed25519PublicKey | None:
    try:
        return None if path is None else load_verify_key(path)
    except AuditError as e:
        raise _bad_input(str(e)) from None


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


# ---------------------------------------------------------------- plain words

def describe_view(view: object) -> str:
    """One message in words a compliance auditor can read."""
    if isinstance(view, Hello):
        ops = ", ".join(o.name for o in view.catalog)
        return (f"Hello (site {view.site_id}, software {view.software_version}, protocol "
                f"{view.protocol_version}, catalog of {len(view.catalog)} operators"
                f"{': ' + ops if ops else ''}; size bucket {view.size_bucket.value})")
    if isinstance(view, HelloReply):
        return (f"Hello reply ({'accepted' if view.accepted else 'refused'}, protocol {view.protocol_version}, "
                f"heartbeat every {view.heartbeat_interval_ms} ms, poll wait {view.poll_wait_ms} ms)")
    if isinstance(view, Heartbeat):
        return f"Heartbeat ({view.tasks_done} tasks done)"
    if isinstance(view, HeartbeatReply):
        return f"Heartbeat reply (site {'known' if view.known else 'NOT known'})"
    if isinstance(view, Poll):
        return f"Poll (asks for a task, waits up to {view.wait_ms} ms)"
    if isinstance(view, PollReply):
        return "Poll reply (no task)" if view.task is None else describe_view(view.task)
    if isinstance(view, Task):
        s = view.settings
        return (f"Task {view.task_id} (search {view.search_id}, attempt {view.attempt}) strategy: "
                f"{view.strategy.describe()}, evaluator {s.evaluator.value}, metric {s.metric.value}, "
                f"seed {s.seed}, {s.train_steps} train steps, sample rate {s.sample_rate_permille / 10:g}%, "
                f"screening {_on_off(s.use_screening)}, cache {_on_off(s.use_cache)}, "
                f"deadline {view.deadline_s} s")
    if isinstance(view, ResultReport):
        return (f"Result {view.task_id}: status {view.status.value}, score {view.score:+.4f}, "
                f"epsilon spent {view.epsilon_spent}, remaining {view.epsilon_remaining}; "
                f"eval {view.eval_ms / 1000:g} s, processing {view.processing_ms / 1000:g} s, "
                f"{view.cache_hits} steps from cache (saving {view.cache_saved_ms / 1000:g} s), "
                f"{view.operators_run} operators run, sample {view.sampled_permille / 10:g}% of the data, "
                f"processed {view.targets_permille / 10:g}% of the sample")
    if isinstance(view, ResultAck):
        if not view.accepted:
            return "Result acknowledgement (NOT accepted)"
        return "Result acknowledgement (accepted" + (", duplicate)" if view.duplicate else ")")
    if isinstance(view, Strategy):
        return f"Strategy: {view.describe()}"
    return type(view).__name__


def _message_class(type_name: str) -> type[Message] | None:
    prefix = pb.DESCRIPTOR.package + "."
    cls = getattr(pb, type_name[len(prefix):], None) if type_name.startswith(prefix) else None
    if isinstance(cls, type) and issubclass(cls, Message) and cls.DESCRIPTOR.full_name == type_name:
        return cls
    return None


def _view(entry: Entry) -> tuple[Any, str | None]:
    """(typed view, None) or (None, why it cannot be read) for a message entry."""
    cls = _message_class(entry.msg_type)
    if cls is None:
        return None, "not a message type of this protocol version"
    try:
        return from_pb(decode(cls, entry.payload)), None
    except MalformedMessage as e:  # logged as received; the reason names fields only
        return None, str(e)
    except TypeError:
        return None, "no plain-words form for this type"


_ADAPTER_EXCHANGE = "autodp.fedlora.v1.AdapterExchange"


def describe_entry(entry: Entry) -> tuple[str, str]:
    """(direction in words, content in words) for one entry."""
    if entry.kind == "genesis":
        return "-", f"log started by {entry.side} '{entry.party}' (software {entry.software_version})"
    if entry.kind == "recovered":
        return "-", f"crash recovery: {entry.dropped_bytes} bytes of an unfinished line dropped"
    if entry.kind == "undelivered":
        return "-", f"entry {entry.ref} was not delivered: the call failed ({entry.status})"
    where = f"sent to {entry.peer}" if entry.direction == "out" else f"received from {entry.peer}"
    if entry.msg_type == _ADAPTER_EXCHANGE:  # federated training: a digest record of an adapter exchange
        from google.protobuf.message import DecodeError

        from protos.federated import describe_exchange
        from protos.federated import pb as fpb  # the untyped generated module (no .pyi committed for it)

        try:
            return where, describe_exchange(fpb.AdapterExchange.FromString(entry.payload))
        except DecodeError:
            return where, "adapter exchange record (unreadable: not a valid record)"
    view, why = _view(entry)
    return where, describe_view(view) if why is None else f"{_short(entry.msg_type)} (unreadable: {why})"


# ---------------------------------------------------------------- commands

@app.command("verify")
def verify_cmd(
    log: LogArg,
    key: Annotated[Path | None, typer.Option("--key", help="The party's public key (PEM) to pin.")] = None,
) -> None:
    """Check every entry's hash, link and signature, and the signed head (truncation)."""
    pinned = _key(key)
    try:
        r = verify(log, pinned)
    except AuditVerificationError as e:
        typer.echo(f"FAILED: {e}")
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    except AuditError as e:
        raise _bad_input(str(e)) from None
    how = "pinned" if r.pinned else "NOT pinned (taken from the log itself; pass --key to pin it)"
    typer.echo(f"OK: {r.entries} entries ({r.messages} messages) of {r.side} '{r.party}', "
               f"key {r.key_fingerprint} {how}")


def _verification_line(reading: AuditReading) -> str:
    return "OK" if reading.error is None else f"FAILED: {reading.error}"


def _show_json(log: Path, reading: AuditReading) -> None:
    rows = []
    for e in reading.entries:
        view, why = _view(e) if e.kind == "message" else (None, None)
        rows.append({
            "index": e.index, "time": _time(e.time_ms), "kind": e.kind, "direction": e.direction or None,
            "peer": e.peer or None, "type": e.msg_type or None, "sha256": e.sha256 or None,
            "description": describe_entry(e)[1], "unreadable": why,
            "message": view.model_dump(mode="json") if view is not None else None,
        })
    r = reading.report
    err = reading.error
    out = {
        "log": str(log), "party": r and r.party, "side": r and r.side,
        "key_fingerprint": r and r.key_fingerprint, "pinned": r and r.pinned,
        "verification": {"ok": err is None, "error": str(err) if err else None,
                         "entry": err.entry_index if err else None},
        "entries": rows,
        "types_sent": sorted({_short(e.msg_type) for e in reading.entries if e.direction == "out"}),
    }
    typer.echo(json.dumps(out, indent=2))


def _show_text(log: Path, reading: AuditReading) -> None:
    r = reading.report
    typer.echo(f"Audit log    : {log}")
    if r is not None:
        how = "pinned with --key" if r.pinned else "not pinned: taken from the log itself, pass --key to check it"
        typer.echo(f"Party        : {r.party} ({r.side}), software {r.software_version}")
        typer.echo(f"Signing key  : {r.key_fingerprint} ({how})")
        typer.echo(f"Entries      : {r.entries} ({r.messages} messages, {r.recovered} crash recoveries), "
                   f"{_time(r.first_time_ms)} to {_time(r.last_time_ms)}")
    typer.echo(f"Verification : {_verification_line(reading)}")
    typer.echo("")
    typer.echo(f"{'#':>6}  {'time (UTC)':<24}  {'direction':<26}  message")
    for e in reading.entries:
        where, what = describe_entry(e)
        typer.echo(f"{e.index:>6}  {_time(e.time_ms):<24}  {where:<26}  {what}")
    if reading.error is not None and reading.error.entry_index is not None:
        typer.echo(f"Entries from {reading.error.entry_index} on are not shown: they fail verification.")
    counts = Counter((e.direction, _short(e.msg_type)) for e in reading.entries if e.kind == "message")
    typer.echo("")
    typer.echo("Summary (messages per direction and type):")
    for (direction, name), n in sorted(counts.items()):
        typer.echo(f"  {'sent' if direction == 'out' else 'received':<8}  {name:<16}  {n}")
    sent = sorted({e.msg_type for e in reading.entries if e.direction == "out"})
    if not sent:
        typer.echo("Fields that left this party: none (no message was sent)")
        return
    typer.echo(f"Fields that left this party: message types {', '.join(_short(t) for t in sent)} "
               "(numbers, enums and identifiers only)")
    for t in sent:
        cls = _message_class(t)
        if cls is not None:
            typer.echo(f"  {_short(t)}: {', '.join(f.name for f in cls.DESCRIPTOR.fields)}")


@app.command("show")
def show_cmd(
    log: LogArg,
    key: Annotated[Path | None, typer.Option("--key", help="The party's public key (PEM) to pin.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the log in plain words: who sent what to whom, and what left this party.

    Only entries that pass verification are shown; exit 1 when the log fails verification."""
    pinned = _key(key)
    try:
        reading = read_log(log, pinned)
    except AuditError as e:
        raise _bad_input(str(e)) from None
    (_show_json if as_json else _show_text)(log, reading)
    if reading.error is not None:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("cross-check")
def cross_check_cmd(
    site_log: Annotated[Path, typer.Argument(help="The site's audit log.")],
    coord_log: Annotated[Path, typer.Argument(help="The coordinator's audit log.")],
    site_key: Annotated[Path | None, typer.Option("--site-key", help="Site public key (PEM).")] = None,
    coord_key: Annotated[
        Path | None, typer.Option("--coordinator-key", help="Coordinator public key (PEM).")] = None,
) -> None:
    """Match every message the site sent with one the coordinator received (same SHA-256, same order),
    and every message the coordinator sent to this site with one the site received."""
    keys = _key(site_key), _key(coord_key)
    try:
        r = cross_check(site_log, coord_log, site_key=keys[0], coordinator_key=keys[1])
    except AuditVerificationError as e:
        typer.echo(f"FAILED: {e}")
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    except AuditError as e:
        raise _bad_input(str(e)) from None
    typer.echo(f"Site '{r.site.party}': {r.site.entries} entries, key {r.site.key_fingerprint}")
    typer.echo(f"Coordinator '{r.coordinator.party}': {r.coordinator.entries} entries, "
               f"key {r.coordinator.key_fingerprint}")
    typer.echo(f"site -> coordinator: {r.site_to_coordinator} messages matched")
    typer.echo(f"coordinator -> site: {r.coordinator_to_site} messages matched")
    if r.undelivered or r.lost_replies:
        typer.echo(f"explained by the site's undelivered markers: {r.undelivered} failed sends, "
                   f"{r.lost_replies} replies lost to failed calls")
    if r.ok:
        typer.echo("OK: every message matches 1:1, in order")
        return
    typer.echo(f"NOT OK: {len(r.unmatched)} unmatched messages")
    for u in r.unmatched:
        other = "coordinator" if u.log == "site" else "site"
        verb = "sent" if u.direction == "out" else "received"
        typer.echo(f"  {u.log} log entry {u.index}: {verb} {_short(u.msg_type)}, no match in the {other} log")
    raise typer.Exit(EXIT_CHECK_FAILED)
