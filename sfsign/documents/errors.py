"""Exceptions shared by the signing modules (kept apart so `sign` and `tsa` can both raise them)."""

from __future__ import annotations


class SigningError(Exception):
    """Signing refused or failed. Messages name files and certificates, never secrets.

    A single message argument keeps it picklable across a process pool.
    """


class TimestampUnavailable(SigningError):
    """Every configured TSA failed, so a level that needs a timestamp cannot be reached.

    Signing fails closed instead of silently producing a B-B signature; the message names each
    URL tried (credentials stripped) and why it failed, so the job can retry and then error.
    """


class ValidationInfoUnavailable(SigningError):
    """Revocation information (OCSP/CRL) for a chain could not be fetched, so B-LT/B-LTA is not reached.

    Transient like `TimestampUnavailable`: the upgrade writes nothing and the job retries later. The
    message names the OCSP/CRL URLs involved (credentials stripped) and why fetching failed.
    """


class FieldAlreadySigned(SigningError):
    """The field carries a signature already: this signer's signature was applied before."""


class UnknownSignatureField(SigningError):
    """The document has no such signature field; creating one now would invalidate earlier signatures."""
