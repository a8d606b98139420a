"""The checks that need no org: the data directory, the mail relay, the signing keys and their certificates,
the revocation sources the level needs, the timestamp authorities and the templates.

`run` makes the blocking ones (`local_checks`) before it opens a connection; `check` makes them all.
Each uses the daemon's own code path (key loading, the TSA client, the renderer), so passing means
the daemon will work.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sfsign.check.report import Check, fail, ok
from sfsign.config import Rules, Settings
from sfsign.documents.model import sample_contract
from sfsign.documents.render import RenderError, render_pdf
from sfsign.private_files import private_dir
from sfsign.profiles import preflight_profiles, signing_request

EXPIRY_WARNING = timedelta(days=30)
NO_TSA_FIX = (
    "every document of profile {name!r} ({level}) would end in Error. Without internet access (the example rules "
    "name public TSAs), list a TSA this machine reaches in the profile's tsa.urls: your corporate TSA (ask IT for "
    "its RFC 3161 URL; tsa.username and tsa.password_env if it needs a login) or a TSA on this network; for a trial "
    "set `level: B-B` (no timestamp; `sfsign demo` shows the other levels with its own local TSA), or "
    "`on_tsa_failure: downgrade` to sign at B-B while no TSA answers"
)
SIGNING_KEYS_FIX = "fix the key file, its passphrase variable or the certificate"


def check_signing(rules: Rules) -> list[Check]:
    problems = preflight_profiles(rules)
    if problems:
        return [fail("signing keys", p, SIGNING_KEYS_FIX) for p in problems]
    out = []
    from sfsign.documents.sign import load_signer

    for name in sorted({r.profile for r in rules.rules}):
        cert = load_signer(signing_request(rules.profiles[name]).key).signing_cert
        if cert is None:
            continue  # preflight_profiles already reported it
        not_after: datetime = cert["tbs_certificate"]["validity"]["not_after"].native
        left = not_after - datetime.now(UTC)
        detail = f"profile {name!r}: {cert.subject.human_friendly}, valid until {not_after:%Y-%m-%d}"
        if left < EXPIRY_WARNING:
            out.append(fail("signing certificate expiry", f"{detail} ({left.days} days left)",
                             "order a new certificate now and put it in the profile's key file"))
        else:
            out.append(ok("signing certificate", detail))
    return out


def check_revocation_sources(rules: Rules) -> list[Check]:
    """B-LT and B-LTA embed OCSP answers or CRLs for every certificate of the signer's chain; a certificate
    that names neither has none to fetch, and every document would end "upgrade failed" after signing."""
    from sfsign.documents.sign import load_signer

    out = []
    for name in sorted({r.profile for r in rules.rules}):
        profile = rules.profiles[name]
        if profile.level not in ("B-LT", "B-LTA"):
            continue
        try:
            signer = load_signer(signing_request(profile).key)
        except Exception:
            continue
        chain = [c for c in (signer.signing_cert, *signer.cert_registry) if c is not None]
        lacking = sorted({c.subject.human_friendly for c in chain
                          if not c.self_issued and not c.ocsp_urls and not c.crl_distribution_points})
        if lacking:
            out.append(fail(
                "revocation data", f"profile {name!r} is level {profile.level}, but the certificate(s) "
                f"{'; '.join(lacking)} name no OCSP responder and no CRL, so no document could reach that level",
                f"set `level: B-T` in profile {name!r}, or use a certificate from a CA that publishes OCSP "
                "or CRLs (its certificates carry the URLs)"))
        else:
            out.append(ok("revocation data", f"profile {name!r}: every certificate of the chain names OCSP or a CRL"))
    return out


def check_data_dir(settings: Settings) -> list[Check]:
    """The outbox, the artifacts and the work files all live here: a directory sfsign cannot write is
    found before start, not as a traceback from the first database write."""
    path = settings.data_dir
    try:
        private_dir(path)
        probe = path / ".sfsign-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return [fail("data directory", f"{path} is not writable ({exc.strerror or type(exc).__name__})",
                      "create it writable for the user sfsign runs as, or set SFSIGN_DATA_DIR to such a directory")]
    return [ok("data directory", f"{path} is writable")]


async def check_timestamps(rules: Rules) -> list[Check]:
    """Ask each profile's TSAs for a real token, as signing would (same client, failover, credentials)."""
    import hashlib
    import secrets

    from sfsign.documents.tsa import aclose_timestampers, get_timestamper, redact_url
    from sfsign.failures import PermanentFailure
    from sfsign.profiles import tsa_of

    used = sorted({r.profile for r in rules.rules})
    out: list[Check] = []
    try:
        for name in used:
            profile = rules.profiles[name]
            if profile.tsa is None:
                continue
            try:
                urls, auth = tsa_of(profile)
            except PermanentFailure as exc:
                out.append(fail("timestamp authority", f"profile {name!r}: {exc.reason}",
                                 "set the variable named by tsa.password_env"))
                continue
            failed: list[Check] = []
            for url in urls:  # each one, so a dead fallback is found before it is needed
                stamper = get_timestamper([url], auth, timeout=profile.tsa.timeout_s)
                try:
                    token = await stamper.async_timestamp(hashlib.sha256(secrets.token_bytes(16)).digest(), "sha256")
                except Exception as exc:  # TimestampUnavailable names the URL and the reason
                    failed.append(fail("timestamp authority", f"profile {name!r}: {exc}",
                                        "check the URL, the network path and the TSA credentials"))
                    out.append(failed[-1])
                    continue
                gen_time = token["content"]["encap_content_info"]["content"].parsed["gen_time"].native
                skew = abs((gen_time - datetime.now(UTC)).total_seconds())
                detail = f"profile {name!r}: {redact_url(url)} answered (genTime {gen_time:%Y-%m-%d %H:%M:%S}Z)"
                if skew > 300:
                    out.append(fail("timestamp authority", f"{detail}, {skew:.0f} s away from this machine's clock",
                                     "synchronise this machine's clock (NTP) or check the TSA"))
                else:
                    out.append(ok("timestamp authority", detail))
            if failed and len(failed) == len(urls):
                failed[-1].detail += f"; none of profile {name!r}'s {len(urls)} TSA(s) answered from this machine"
                failed[-1].fix = NO_TSA_FIX.format(name=name, level=profile.level)
    finally:
        await aclose_timestampers()
    if not out:
        out.append(Check("timestamp authority", None, "no profile uses a timestamp (level B-B)"))
    return out


MAIL_RELAY_FIX = ("set SFSIGN_SMTP_URL to the org's relay (smtp://HOST:587 with STARTTLS, or smtps://HOST:465) and "
                  "SFSIGN_MAIL_FROM to the address the mails come from; SFSIGN_SMTP_USERNAME and "
                  "SFSIGN_SMTP_PASSWORD if it needs a login (docs/operations.md, \"Mail relay\")")


def relay_missing(why: str) -> Check:
    """The finding `run` refuses on when customers sign and no relay is set."""
    return fail("mail relay", f"{why}, but SFSIGN_SMTP_URL is not set: invitations, codes and the completed "
                              "copies could not be sent", MAIL_RELAY_FIX)


def check_mail_relay(settings: Settings, rules: Rules) -> list[Check]:
    """Customer signing needs the relay from the first envelope on (the invitations); found at start, not
    as mails piling up in the queue."""
    signing = [r.name for r in rules.rules if r.signers is not None]
    if not signing:
        return []
    relay = settings.smtp_relay()
    if relay is None:
        return [relay_missing(f"rule(s) {', '.join(map(repr, signing))} have signers")]
    return [ok("mail relay", f"{relay.url}, mail from {relay.mail_from.address} (for {len(signing)} rule(s) with "
                             "signers)")]


def check_templates(rules: Rules) -> list[Check]:
    out = []
    fields = rules.template_fields()
    for template in sorted({str(t) for t in rules.templates.values()}):
        sample = sample_contract(kind="quote", line_count=12).model_copy(
            update={"fields": {name: name for name in fields.get(template, ())}})
        try:
            rendered = render_pdf(sample, template)
        except RenderError as exc:
            out.append(fail("template", str(exc), "fix the template (line and message above)"))
            continue
        out.append(ok("template", f"{template}: {rendered.pages} page(s) for a 12-line sample"))
    return out


def local_checks(settings: Settings, rules: Rules) -> list[Check]:
    """What needs no org: the data directory, the mail relay, the keys, the revocation sources, the templates.
    Blocking."""
    problems = preflight_profiles(rules)
    checks = check_data_dir(settings) + check_mail_relay(settings, rules)
    checks += [fail("signing keys", p, SIGNING_KEYS_FIX) for p in problems]
    if not problems:
        checks += check_revocation_sources(rules)
    return checks + check_templates(rules)
