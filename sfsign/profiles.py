"""Signing profiles (`signing_profiles:` in the rules file) as the requests the process pool signs with.

Secrets (key passphrase, token PIN, TSA password) are read when a request is built, never kept, so a
rotated secret needs no restart; a missing one is a `PermanentFailure` naming the variable, never the
value. `preflight_profiles` loads every key the rules use before the daemon touches Salesforce, so a
wrong passphrase or a missing file shows at start, not on the first record.

Knobs: none of its own; a profile's `key`, `level`, `tsa`, `on_tsa_failure`, `trust_roots` and
`appearance` in the rules file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sfsign.config import ProfileConfig, Rules, read_secret
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.errors import SigningError
from sfsign.documents.specs import Appearance, KeySource, KeySpec, Pkcs11KeySpec, SignatureLevel, TsaAuth
from sfsign.failures import PermanentFailure


def _secret(env: str | None, what: str) -> Any:
    if env is None:
        return None
    value = read_secret(env)
    if value is None:
        raise PermanentFailure(f"{what} is not set: define {env} in the environment or the secrets directory", "CONFIG")
    return value


def key_source(profile: ProfileConfig) -> KeySource:
    """The profile's key, with its secret read now (so rotation needs no restart)."""
    key = profile.key
    if key.pkcs11 is not None:
        hsm = key.pkcs11
        return Pkcs11KeySpec(
            module_path=hsm.module,
            token_label=hsm.token,
            key_label=hsm.key,
            cert_label=hsm.cert,
            cert_path=hsm.cert_file,
            chain_paths=tuple(key.chain),
            pin=_secret(hsm.pin_env, "the token PIN"),
        )
    return KeySpec(
        pkcs12_path=key.pkcs12,
        key_path=key.pem_key,
        cert_path=key.pem_cert,
        chain_paths=tuple(key.chain),
        passphrase=_secret(key.passphrase_env, "the signing key's passphrase"),
    )


def tsa_of(profile: ProfileConfig) -> tuple[tuple[str, ...], TsaAuth | None]:
    if profile.tsa is None:
        return (), None
    password = _secret(profile.tsa.password_env, "the TSA password")
    auth = TsaAuth(username=profile.tsa.username, password=password) if profile.tsa.username else None
    return tuple(profile.tsa.urls), auth


def upgrade_request(profile: ProfileConfig) -> doc_jobs.UpgradeRequest:
    urls, auth = tsa_of(profile)
    return doc_jobs.UpgradeRequest(
        target=SignatureLevel(profile.level), tsa_urls=urls, tsa_auth=auth, trust_roots=tuple(profile.trust_roots)
    )


def signing_request(profile: ProfileConfig) -> doc_jobs.SigningRequest:
    """What the pool needs to sign: B-LT/B-LTA sign at B-T first (the upgrade follows later)."""
    appearance = Appearance(
        name=profile.appearance.name,
        reason=profile.appearance.reason,
        location=profile.appearance.location,
        contact_info=profile.appearance.contact,
    )
    urls, auth = tsa_of(profile)
    level = SignatureLevel.B_B if profile.level == "B-B" else SignatureLevel.B_T
    return doc_jobs.SigningRequest(
        key=key_source(profile),
        appearance=appearance,
        level=level,
        tsa_urls=urls,
        tsa_auth=auth,
        downgrade_on_tsa_failure=profile.on_tsa_failure == "downgrade",
        trust_roots=tuple(profile.trust_roots),
    )


def preflight_profiles(rules: Rules) -> list[str]:
    """Problems with the signing profiles the rules use, found before the daemon touches Salesforce.

    Loads each key (so a wrong passphrase or a missing file shows at start, not on the first
    record) and checks the certificate's validity; messages name the profile and never a secret.
    """
    # pyHanko parses the keys: imported here, since this runs in `sfsign check`'s and `sfsign run`'s
    # throw-away process at start, and in the daemon process only when the rules are reloaded (SIGHUP).
    from sfsign.documents.sign import check_certificate_validity, load_signer

    problems: list[str] = []
    for name in sorted({r.profile for r in rules.rules}):
        profile = rules.profiles[name]
        try:
            request = signing_request(profile)
            files = request.key.files() if isinstance(request.key, KeySpec) else ()
            for path in files:
                if not path.is_file():
                    raise SigningError(f"key file {path} does not exist")
            signer = load_signer(request.key)
            if signer.signing_cert is None:
                raise SigningError("the key source holds no certificate")
            check_certificate_validity(signer.signing_cert, datetime.now(UTC))
        except (PermanentFailure, SigningError, ValueError) as exc:
            problems.append(f"{rules.source}: signing profile {name!r}: {exc}")
    return problems
