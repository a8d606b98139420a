"""What the daemon hands the process pool and gets back about signing: plain data, no pyHanko.

The daemon process describes a signature (key source, level, timestamp authorities, stamp text) and the
pool's processes, which have pyHanko loaded (documents/pool_preload.py), turn it into one. Kept apart from
`sign`, `keys`, `pkcs11`, `appearance`, `tsa` and `signer_signature` (which re-export these names) so that
the request types cost the daemon process no signing stack (tests/unit/core/test_daemon_imports.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

SIGNATURE_FIELD = "SellerSignature"
CUSTOMER_FIELD = "CustomerSignature"


def customer_field(index: int) -> str:
    """The PDF field of the signer at 0-based `index` in signing order: the first keeps `CUSTOMER_FIELD`
    (documents sealed before there were several signers have it), then CustomerSignature2, 3, ..."""
    return CUSTOMER_FIELD if index == 0 else f"{CUSTOMER_FIELD}{index + 1}"


class SignatureLevel(enum.StrEnum):
    B_B = "B-B"
    B_T = "B-T"
    B_LT = "B-LT"
    B_LTA = "B-LTA"


class Appearance(BaseModel):
    """What the visible stamp and the signature dictionary say."""

    model_config = ConfigDict(frozen=True)

    name: str  # the person signing for the seller
    reason: str = ""
    location: str = ""
    contact_info: str = ""  # the signer's e-mail for a signer's signature
    # A line under the name that says how the person signed (a signer's stamp, e.g. "Signed electronically
    # via e-mail code"). When set, the stamp shows name, contact, this line and the time; reason and location
    # stay in the signature dictionary only.
    statement: str = ""


class TsaAuth(BaseModel):
    """HTTP basic credentials for the TSAs (the password never appears in a repr or message)."""

    model_config = ConfigDict(frozen=True)

    username: str
    password: SecretStr


class Pkcs11KeySpec(BaseModel):
    """A signing key on a PKCS#11 token, found by labels.

    The certificate comes from the token under `cert_label` (default: `key_label`), or from
    `cert_path`. Issuing CA certificates are taken from `chain_paths` and from the token.
    """

    model_config = ConfigDict(frozen=True)

    module_path: Path
    token_label: str
    key_label: str
    cert_label: str | None = None
    cert_path: Path | None = None
    chain_paths: tuple[Path, ...] = ()
    pin: SecretStr | None = None

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_path, *self.chain_paths) if p is not None)


class KeySpec(BaseModel):
    """Where the signing key lives: a PKCS#12 file, or a PEM/DER key + certificate (+ chain).

    `passphrase` decrypts the PKCS#12 file or the private key. `chain_paths` lists extra
    certificates (issuing CAs) to embed; PKCS#12 files usually carry them already.
    """

    model_config = ConfigDict(frozen=True)

    pkcs12_path: Path | None = None
    key_path: Path | None = None
    cert_path: Path | None = None
    chain_paths: tuple[Path, ...] = ()
    passphrase: SecretStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        pem = self.key_path is not None or self.cert_path is not None
        if self.pkcs12_path is not None and pem:
            raise ValueError("give either pkcs12_path or key_path + cert_path, not both")
        if self.pkcs12_path is None and (self.key_path is None or self.cert_path is None):
            raise ValueError("give pkcs12_path, or both key_path and cert_path")
        return self

    def files(self) -> tuple[Path, ...]:
        main = (self.pkcs12_path,) if self.pkcs12_path else (self.key_path, self.cert_path)
        return tuple(p for p in (*main, *self.chain_paths) if p is not None)


KeySource = KeySpec | Pkcs11KeySpec

#: What the stamp says about how a person signed, per language and authentication method (`AuthMethod`).
STATEMENTS: dict[str, dict[str, str]] = {
    "en": {"email_otp": "Signed electronically via e-mail code", "none": "Signed electronically via e-mail link"},
    "de": {"email_otp": "Elektronisch signiert per E-Mail-Code", "none": "Elektronisch signiert per E-Mail-Link"},
}


@dataclasses.dataclass(frozen=True)
class SignerEvidence:
    """Who signed and how, as the signing page saw it. `auth_method` is an `AuthMethod` value."""

    name: str
    email: str
    auth_method: str
    signed_at: dt.datetime  # when the signer pressed "Sign" (aware)
    ip: str
    authenticated_at: dt.datetime | None = None  # when the e-mail code was accepted (aware)
    language: str = "en"  # the rule's language: the stamp's statement (the dictionary's /Reason stays English)

    def appearance(self) -> Appearance:
        english = STATEMENTS["en"].get(self.auth_method, f"Signed electronically ({self.auth_method})")
        statement = STATEMENTS.get(self.language, {}).get(self.auth_method, english)
        reason = f"{english}; authentication: {self.auth_method}; IP address: {self.ip}"
        return Appearance(name=self.name, contact_info=self.email, statement=statement, reason=reason)

    def auth_seconds(self) -> int | None:
        if self.authenticated_at is None:
            return None
        return max(0, int((self.signed_at - self.authenticated_at).total_seconds()))
