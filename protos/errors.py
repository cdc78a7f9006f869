"""Errors of the shared contract.

Hierarchy::

    AutodpError                      base of every error autodp raises on purpose
    ├── ProtocolError                a message does not follow the v1 contract
    │   └── MalformedMessage         bytes that do not parse, a bad identifier, a missing field
    ├── CertificateError             a CA, certificate or key is missing, unreadable or does not match
    ├── AuditError                   an audit log cannot be written or read
    │   └── AuditVerificationError   an audit log fails verification (names the first bad entry)
    └── ConfigError                  a YAML config or policy file is invalid (names the key)

Messages never carry site data: they name fields, operators and numbers only.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "AuditVerificationError",
    "AutodpError",
    "CertificateError",
    "ConfigError",
    "MalformedMessage",
    "ProtocolError",
]


class AutodpError(Exception):
    """Base of every error autodp raises on purpose."""


class ProtocolError(AutodpError):
    """A message does not follow the v1 contract."""


class MalformedMessage(ProtocolError):
    """Bytes that do not parse, a bad identifier or a missing required field."""


class CertificateError(AutodpError):
    """A CA, certificate or key is missing, unreadable or does not match."""


class AuditError(AutodpError):
    """An audit log cannot be written or read."""


class AuditVerificationError(AuditError):
    """An audit log fails verification."""

    def __init__(self, message: str, entry_index: int | None = None) -> None:
        super().__init__(message)
        self.entry_index = entry_index


class ConfigError(AutodpError):
    """A YAML config or policy file is invalid."""
