"""``autodp certs``: create the federation CA and issue the coordinator's and the sites' certificates.

Typical use, on the machine that holds the CA (keep ``ca.key`` offline)::

    autodp certs init --dir certs
    autodp certs issue coordinator --dir certs --host coord.example.org --host 10.0.0.5
    autodp certs issue site hospital-a --dir certs
    autodp certs show certs/site-hospital-a.crt

Then give each host its own certificate, key and audit key, plus ``ca.crt``; the audit public keys go
to whoever verifies that host's audit log. Files marked SECRET must travel over a trusted channel.

Exit codes: 0 success, 2 bad input (a missing or invalid file, an existing file without --force).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from protos.errors import CertificateError
from protos.tls import CertPaths, describe_certificate, init_ca, issue_coordinator, issue_site

__all__ = ["app", "issue_app"]

# Same value as protos.cli.EXIT_BAD_INPUT; protos.cli imports this module, so it is not imported here.
_EXIT_BAD_INPUT = 2

app = typer.Typer(
    help="Create the federation CA and issue mutual-TLS certificates (exit codes: 0 ok, 2 bad input).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
issue_app = typer.Typer(
    help="Issue a certificate signed by the CA: for the coordinator or for one site.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(issue_app, name="issue")

DirOpt = Annotated[Path, typer.Option("--dir", help="Certificate folder (holds ca.crt and ca.key).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing files.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except CertificateError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from None


def _describe(path: Path) -> list[str]:
    info = describe_certificate(path)
    usages = [u for u, on in (("server", info["server_auth"]), ("client", info["client_auth"])) if on]
    lines = [f"  subject CN:  {info['subject_cn']}", f"  issuer CN:   {info['issuer_cn']}"]
    if info["is_ca"]:
        lines.append("  kind:        certificate authority")
    elif usages:
        lines.append(f"  used for:    {' and '.join(usages)} authentication")
    if info["sans"]:
        lines.append(f"  names:       {', '.join(info['sans'])}")
    expired = "  (EXPIRED)" if info["expired"] else ""
    lines += [
        f"  valid from:  {info['not_before']}",
        f"  valid until: {info['not_after']}{expired}",
        f"  sha256:      {info['sha256']}",
    ]
    return lines


def _show(path: Path) -> None:
    typer.echo("\n".join(_describe(path)))


def _report(paths: CertPaths, holder: str) -> None:
    typer.echo(f"wrote {paths.cert}  (public: certificate of {holder})")
    _show(paths.cert)
    typer.echo(f"wrote {paths.key}  (SECRET, mode 0600: TLS private key of {holder})")
    typer.echo(f"wrote {paths.audit_key}  (SECRET, mode 0600: signs the audit log of {holder})")
    typer.echo(f"wrote {paths.audit_pub}  (public: verifies the audit log of {holder})")
    typer.echo(f"install on the host of {holder}: {paths.ca.name} and the four files above")


@app.command("init")
def init_cmd(
    cert_dir: DirOpt = Path("certs"),
    name: Annotated[str, typer.Option("--name", help="Common name of the CA.")] = "autodp-federation",
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 3650,
    force: ForceOpt = False,
) -> None:
    """Create the federation CA (ca.crt, ca.key); --force replaces it and invalidates what it issued."""
    with _user_errors():
        crt = init_ca(cert_dir, name=name, days=days, force=force)
        typer.echo(f"wrote {crt}  (public: give it to the coordinator and to every site)")
        _show(crt)
        typer.echo(
            f"wrote {crt.parent / 'ca.key'}  (SECRET, mode 0600: signs every certificate; keep offline)"
        )


@issue_app.command("coordinator")
def issue_coordinator_cmd(
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="DNS name or IP the sites dial (repeatable). Default: localhost, 127.0.0.1."
        ),
    ] = None,
    cert_dir: DirOpt = Path("certs"),
    cn: Annotated[str, typer.Option("--cn", help="Common name of the certificate.")] = "coordinator",
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 825,
    force: ForceOpt = False,
) -> None:
    """Issue the coordinator's certificate (server and client authentication)."""
    with _user_errors():
        paths = issue_coordinator(
            cert_dir,
            hosts=tuple(hosts) if hosts else ("localhost", "127.0.0.1"),
            common_name=cn,
            days=days,
            force=force,
        )
        _report(paths, "the coordinator")


@issue_app.command("site")
def issue_site_cmd(
    site_id: Annotated[str, typer.Argument(metavar="NAME", help="The site id; becomes the certificate CN.")],
    cert_dir: DirOpt = Path("certs"),
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 825,
    force: ForceOpt = False,
) -> None:
    """Issue a site's client certificate; the coordinator maps its CN to the registered site id."""
    with _user_errors():
        paths = issue_site(cert_dir, site_id, days=days, force=force)
        _report(paths, f"site {site_id}")


@app.command("show")
def show_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A PEM certificate (.crt).")],
) -> None:
    """Print what a certificate says: names, validity, fingerprint."""
    with _user_errors():
        lines = _describe(file)
        typer.echo("\n".join([str(file), *lines]))
