"""`sfsign check`: proves an org (and this installation) is ready, item by item, with the fix for each miss.

Every check uses the same code path the daemon uses — the same login, the same SOQL, the same
subscription, the same key loading and rendering — so "check passes" means "the daemon will work",
not "the fields look right".
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sfsign.config import SFSIGN_OWNED_FIELDS, ConfigError, Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.documents.model import sample_contract
from sfsign.documents.render import RenderError, render_pdf
from sfsign.metadata import MetadataError, load_schema
from sfsign.private_files import private_dir
from sfsign.profiles import preflight_profiles, signing_request
from sfsign.rule_fields import problems_in_describe
from sfsign.salesforce.errors import AuthError, SalesforceError
from sfsign.salesforce.names import File, SignatureEvent, SignRequest
from sfsign.salesforce.records import opportunity_select, quote_select
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import ReplayIdInvalid, SubscriptionFailed

EXPIRY_WARNING = timedelta(days=30)

# Metadata API field types → the type `describe` reports for them.
DESCRIBE_TYPES = {
    "Text": "string", "Picklist": "picklist", "Url": "url", "DateTime": "datetime", "Date": "date",
    "LongTextArea": "textarea", "TextArea": "textarea", "Checkbox": "boolean", "Number": "double",
    "Lookup": "reference", "MasterDetail": "reference", "Email": "email", "Phone": "phone",
    "Currency": "currency", "Percent": "percent", "AutoNumber": "string",
}
SELECTS = {"Opportunity": opportunity_select, "Quote": quote_select}
NO_TSA_FIX = (
    "every document of profile {name!r} ({level}) would end in Error. Without internet access (the example rules "
    "name public TSAs), list a TSA this machine reaches in the profile's tsa.urls: your corporate TSA (ask IT for "
    "its RFC 3161 URL; tsa.username and tsa.password_env if it needs a login) or a TSA on this network; for a trial "
    "set `level: B-B` (no timestamp; `sfsign demo` shows the other levels with its own local TSA), or "
    "`on_tsa_failure: downgrade` to sign at B-B while no TSA answers"
)
SIGNING_KEYS_FIX = "fix the key file, its passphrase variable or the certificate"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not run (an earlier check failed, or not configured)
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


def check_signing(rules: Rules) -> list[Check]:
    problems = preflight_profiles(rules)
    if problems:
        return [_fail("signing keys", p, SIGNING_KEYS_FIX) for p in problems]
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
            out.append(_fail("signing certificate expiry", f"{detail} ({left.days} days left)",
                             "order a new certificate now and put it in the profile's key file"))
        else:
            out.append(_ok("signing certificate", detail))
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
            out.append(_fail(
                "revocation data", f"profile {name!r} is level {profile.level}, but the certificate(s) "
                f"{'; '.join(lacking)} name no OCSP responder and no CRL, so no document could reach that level",
                f"set `level: B-T` in profile {name!r}, or use a certificate from a CA that publishes OCSP "
                "or CRLs (its certificates carry the URLs)"))
        else:
            out.append(_ok("revocation data", f"profile {name!r}: every certificate of the chain names OCSP or a CRL"))
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
        return [_fail("data directory", f"{path} is not writable ({exc.strerror or type(exc).__name__})",
                      "create it writable for the user sfsign runs as, or set SFSIGN_DATA_DIR to such a directory")]
    return [_ok("data directory", f"{path} is writable")]


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
                out.append(_fail("timestamp authority", f"profile {name!r}: {exc.reason}",
                                 "set the variable named by tsa.password_env"))
                continue
            failed: list[Check] = []
            for url in urls:  # each one, so a dead fallback is found before it is needed
                stamper = get_timestamper([url], auth, timeout=profile.tsa.timeout_s)
                try:
                    token = await stamper.async_timestamp(hashlib.sha256(secrets.token_bytes(16)).digest(), "sha256")
                except Exception as exc:  # TimestampUnavailable names the URL and the reason
                    failed.append(_fail("timestamp authority", f"profile {name!r}: {exc}",
                                        "check the URL, the network path and the TSA credentials"))
                    out.append(failed[-1])
                    continue
                gen_time = token["content"]["encap_content_info"]["content"].parsed["gen_time"].native
                skew = abs((gen_time - datetime.now(UTC)).total_seconds())
                detail = f"profile {name!r}: {redact_url(url)} answered (genTime {gen_time:%Y-%m-%d %H:%M:%S}Z)"
                if skew > 300:
                    out.append(_fail("timestamp authority", f"{detail}, {skew:.0f} s away from this machine's clock",
                                     "synchronise this machine's clock (NTP) or check the TSA"))
                else:
                    out.append(_ok("timestamp authority", detail))
            if failed and len(failed) == len(urls):
                failed[-1].detail += f"; none of profile {name!r}'s {len(urls)} TSA(s) answered from this machine"
                failed[-1].fix = NO_TSA_FIX.format(name=name, level=profile.level)
    finally:
        await aclose_timestampers()
    if not out:
        out.append(Check("timestamp authority", None, "no profile uses a timestamp (level B-B)"))
    return out


def check_templates(rules: Rules) -> list[Check]:
    out = []
    fields = rules.template_fields()
    for template in sorted({str(t) for t in rules.templates.values()}):
        sample = sample_contract(kind="quote", line_count=12).model_copy(
            update={"fields": {name: name for name in fields.get(template, ())}})
        try:
            rendered = render_pdf(sample, template)
        except RenderError as exc:
            out.append(_fail("template", str(exc), "fix the template (line and message above)"))
            continue
        out.append(_ok("template", f"{template}: {rendered.pages} page(s) for a 12-line sample"))
    return out


async def check_org(settings: Settings, rules: Rules, session: SalesforceSession) -> list[Check]:
    out: list[Check] = []
    try:
        token = await session.login()
    except AuthError as exc:
        return [_fail("login", str(exc), exc.fix or "check SFSIGN_LOGIN_URL, the consumer key, the username and "
                      "that the connected app is pre-authorized for the user (docs/salesforce-setup.md)")]
    out.append(_ok("login", f"{settings.auth_flow} as {settings.username or 'the run-as user'}, org {token.org_id}"))
    rest = session.rest
    try:
        version = api_version_check(settings.api_version, await rest.versions())
        out.append(version)
        if version.ok:  # else every versioned call fails the same way: one clear failure, not ten
            out += await _check_schema(rest, rules)
            out += await check_rules(rest, rules)
            out += await check_access(rest, rules, settings.multi_currency)
            out += await _check_queries(rest, rules, settings.multi_currency)
    except SalesforceError as exc:  # the checks above raise only what they cannot judge: outages, limits
        fix = ("Salesforce did not answer this time (an outage or a limit); run `sfsign check` again"
               if exc.transient else "check the integration user's profile: API Enabled")
        out.append(_fail("REST API", str(exc), fix))
    if any(c.name == "API version" and c.ok is False for c in out):
        return out  # the stream's URI carries the version too
    out += await _check_streaming(rules, session)
    return out


def _version_key(version: str) -> tuple[int, ...]:
    """Numeric order ("9.0" < "68.0"); anything unparsable sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def api_version_check(configured: str, served: list[str]) -> Check:
    """Fails when the org does not serve the configured version (every call would fail: 404, or 410 once
    Salesforce retires it); passes with a warning when the org serves a newer one (a new release
    changes nothing for sfsign until the setting moves, but old versions are retired after a few years)."""
    if not served:
        return _fail("API version", "the org lists no API versions at /services/data/",
                     "check SFSIGN_LOGIN_URL points at the org's My Domain")
    newest = max(served, key=_version_key)
    if configured not in served:
        return _fail("API version", f"{configured} is not served by this org (it serves up to {newest})",
                     f"set SFSIGN_API_VERSION={newest}")
    if _version_key(configured) < _version_key(newest):
        return _ok("API version", f"{configured}; warning: the org serves up to {newest}, "
                                  f"consider SFSIGN_API_VERSION={newest}")
    return _ok("API version", f"{configured} (the org's highest)")


async def _check_schema(rest: SalesforceRest, rules: Rules) -> list[Check]:
    try:
        package = load_schema()
    except MetadataError as exc:
        return [_fail("sfsign package", str(exc), "set SFSIGN_METADATA_DIR to salesforce-metadata/")]
    out = []
    objects = [*sorted({r.object for r in rules.rules}), "ContentVersion", SignatureEvent.NAME, SignRequest.NAME]
    for sobject in objects:
        try:
            describe = await rest.describe(sobject)
        except SalesforceError as exc:
            if exc.transient:
                raise  # one outage line from check_org, not a wrong fix per object
            out.append(_fail(f"object {sobject}", str(exc),
                             f"deploy salesforce-metadata/ and give the integration user access to {sobject}"))
            continue
        fields = {f["name"]: f for f in describe.get("fields", [])}
        expected = package.objects.get(sobject)
        problems = []
        for fdef in (expected.fields.values() if expected else []):
            got = fields.get(fdef.name)
            want = DESCRIBE_TYPES.get(fdef.type, fdef.type.lower())
            if got is None:
                problems.append(f"{fdef.name} is missing (or not visible to the integration user)")
            elif got.get("type") != want:
                problems.append(f"{fdef.name} is {got.get('type')}, expected {want}")
            elif fdef.length and got.get("type") == "string" and int(got.get("length") or 0) < fdef.length:
                problems.append(f"{fdef.name} holds {got.get('length')} characters, expected {fdef.length}")
            elif sobject in SELECTS and fdef.name in SFSIGN_OWNED_FIELDS and not got.get("updateable"):
                problems.append(f"{fdef.name} is read-only for the integration user")
            elif sobject in ("ContentVersion", SignatureEvent.NAME) and not got.get("createable"):
                problems.append(f"{fdef.name} cannot be set by the integration user")
        if problems:
            out.append(_fail(f"object {sobject}", "; ".join(problems),
                             "deploy salesforce-metadata/ (sf project deploy start) and assign the "
                             "sfsign_Integration permission set to the integration user"))
        else:
            out.append(_ok(f"object {sobject}", f"{len(expected.fields) if expected else 0} sfsign fields present"))
    return out


def _record_types_check(rules: Rules, sobject: str, describe: dict[str, Any]) -> Check:
    """The rules' `record_types` against describe's recordTypeInfos: the check `run` refuses to start on."""
    from sfsign.rule_fields import record_type_problems

    problems = record_type_problems(rules, sobject, describe)
    if problems:
        return _fail(f"record types {sobject}", "\n".join(problems),
                     "correct the rules file at the lines named, or create or activate the record types")
    names = sorted({n for r in rules.for_object(sobject) for n in r.record_types or ()})
    return _ok(f"record types {sobject}", f"the rules' record types exist and are active: {', '.join(names)}")


ACCESS_FIX = ("assign the sfsign_Integration permission set to the integration user (deploy salesforce-metadata/ "
              "first); if it is assigned, the org's copy is older than this release: deploy it again")


def daemon_writes() -> dict[str, tuple[str, set[str]]]:
    """Object → ("create" | "update", the fields the daemon sets), from the code that builds the records."""
    from sfsign.salesforce.record_fields import audit_records

    row = {"sobject": "Opportunity", "record_id": "", "transaction_id": "", "event_type": "", "occurred_at": "",
           "actor": "", "detail": ""}
    audit = {name for r in audit_records([row, {**row, "sobject": "Quote"}]) for name in r}
    return {
        SignatureEvent.NAME: ("create", audit),
        # The upload (rest.insert_content_version[s]): a first version, then new versions of the same file.
        "ContentVersion": ("create", {"Title", "PathOnClient", "VersionData", File.TRANSACTION_ID,
                                      "FirstPublishLocationId", "ContentDocumentId", "ReasonForChange"}),
    }


async def check_access(rest: SalesforceRest, rules: Rules, multi_currency: bool) -> list[Check]:
    """Prove, with describe as the integration user, what a minimum-access profile would otherwise hide
    until the first contract: every field the daemon reads is visible, every field it writes is
    editable, and the objects it creates can be created. Field-level security makes an invisible field
    vanish from describe (and a query naming it fail), so a missing name here is a missing grant."""
    from sfsign.reads import rules_reads

    reads = rules_reads(rules, multi_currency)
    writes = daemon_writes()
    for sobject in sorted({r.object for r in rules.rules}):
        writes[sobject] = ("update", set(SFSIGN_OWNED_FIELDS))
    try:  # the package's own fields are the schema check's (with their types): reported once, there
        package = {name: set(obj.fields) for name, obj in load_schema().objects.items()}
    except MetadataError:
        package = {}
    out = []
    for sobject in sorted(set(reads) | set(writes)):
        try:
            describe = await rest.describe(sobject)
        except SalesforceError as exc:
            if exc.transient:
                raise  # one outage line from check_org, not a wrong fix per object
            out.append(_fail(f"access {sobject}", f"the integration user cannot see {sobject}: {exc}", ACCESS_FIX))
            continue
        fields = {f["name"]: f for f in describe.get("fields", [])}
        ours = package.get(sobject, set())
        unreadable = sorted(reads.get(sobject, set()) - set(fields) - ours)
        mode, written = writes.get(sobject, ("", set()))
        written = written - ours
        flag = "createable" if mode == "create" else "updateable"
        read_only = sorted(n for n in written if n in fields and not fields[n].get(flag))
        unreadable += sorted(n for n in written - set(fields) if n not in unreadable)
        problems = []
        if mode == "create" and not describe.get("createable"):
            problems.append(f"cannot create {sobject} records")
        if mode == "update" and not describe.get("updateable"):
            problems.append(f"cannot edit {sobject} records")
        if unreadable:
            problems.append("cannot read " + ", ".join(f"{sobject}.{n}" for n in unreadable))
        if read_only:
            verb = "set" if mode == "create" else "edit"
            problems.append(f"cannot {verb} " + ", ".join(f"{sobject}.{n}" for n in read_only))
        if problems:
            out.append(_fail(f"access {sobject}", "; ".join(problems), ACCESS_FIX))
        else:
            what = [f"reads {len(reads.get(sobject, ()))} field(s)"] if sobject in reads else []
            if mode and written:
                what.append(f"{'creates' if mode == 'create' else 'edits'} {len(written)} field(s)")
            out.append(_ok(f"access {sobject}", " and ".join(what) or "visible"))
    return out


def rule_value_problems(rules: Rules, sobject: str, fields: dict[str, dict[str, Any]]) -> list[str]:
    """A rule waiting for a value its picklist does not have never fires: a typo would look "ready" forever."""
    problems = []
    for rule in rules.for_object(sobject):
        field = fields.get(rule.field)
        if field is None:
            problems.append(f"rule {rule.name}: field {rule.field} does not exist "
                            "(or is not visible to the integration user)")
            continue
        allowed = {v.get("value") for v in field.get("picklistValues") or []}
        missing = [v for v in rule.values if allowed and v not in allowed]
        if missing:
            problems.append(f"rule {rule.name}: {rule.field} has no value {', '.join(map(repr, missing))}"
                            f" (the org's values: {', '.join(sorted(map(repr, allowed - {None})))})")
    return problems


RULE_VALUES_FIX = ("correct the rule's values to the picklist's API values (rules file), "
                   "or add the value to the picklist")


RULE_FIELDS_FIX = "correct the rules file at the lines named, or deploy the fields"


async def check_rules(rest: SalesforceRest, rules: Rules) -> list[Check]:
    """The rules against the org's own schema, one describe per object: the watched fields and their trigger
    values exist (a typo would start "ready" and never fire), and the fields listed for templates can be
    read. One list for `check` to print, `run` to refuse to start on (exit code 3), and a reload to refuse."""
    out = []
    field_problems = []
    for sobject in sorted({r.object for r in rules.rules}):
        try:
            describe = await rest.describe(sobject)
        except SalesforceError as exc:
            if exc.transient:
                raise  # an outage says nothing about the rules: the caller waits it out or reports it
            out.append(_fail(f"rules on {sobject}", str(exc), f"give the integration user access to {sobject}"))
            continue
        fields = {f["name"]: f for f in describe.get("fields", [])}
        problems = rule_value_problems(rules, sobject, fields)
        if problems:
            out.append(_fail(f"rules on {sobject}", "; ".join(problems), RULE_VALUES_FIX))
        else:
            out.append(_ok(f"rules on {sobject}", "every rule's field and values exist"))
        if rules.uses_record_types(sobject):
            out.append(_record_types_check(rules, sobject, describe))
        found = problems_in_describe(rules, sobject, describe)
        field_problems += found
        paths = [f for f in rules.fields_for(sobject) if "." in f]
        if paths and not found:
            try:  # Salesforce itself resolves the relationship paths, as the worker's query will
                await rest.query(f"SELECT Id, {', '.join(paths)} FROM {sobject} WHERE Id = null LIMIT 1")
            except SalesforceError as exc:
                if exc.transient:
                    raise
                field_problems.append(
                    f"{rules.source}: the fields {', '.join(paths)} listed for the {sobject} rules' templates "
                    f"cannot be read ({exc}); check each path (relationship name, then the parent's field API "
                    "name) and the integration user's read access"
                )
    if field_problems:
        out.append(_fail("rule fields", "\n".join(field_problems), RULE_FIELDS_FIX))
    return out


async def _check_queries(rest: SalesforceRest, rules: Rules, multi_currency: bool) -> list[Check]:
    """The exact SOQL the worker sends, with a filter that matches nothing."""
    out = []
    for sobject in sorted({r.object for r in rules.rules} & set(SELECTS)):
        try:
            await rest.query(f"{SELECTS[sobject](multi_currency, rules.fields_for(sobject))} WHERE Id = null LIMIT 1")
        except SalesforceError as exc:
            if exc.transient:
                raise  # one outage line from check_org, not a wrong fix per object
            fix = "grant read access to these fields, or set SFSIGN_MULTI_CURRENCY=false in a single-currency org"
            out.append(_fail(f"read {sobject}", str(exc), fix))
            continue
        out.append(_ok(f"read {sobject}", "record, account, contact and line items are readable"))
    return out


async def _check_streaming(rules: Rules, session: SalesforceSession) -> list[Check]:
    """Subscribe as the daemon does (its stream settings); only from the live position, as nothing is read."""
    stream = session.open_stream(rules.channels(), replay_source=lambda _c: None)

    async def first_message() -> dict[str, Any]:
        async for message in stream.messages():
            return message
        return {}

    reader = asyncio.create_task(first_message())
    try:
        async with asyncio.timeout(30):
            while not set(stream.channels) <= set(stream.subscribed_replay):
                if reader.done():
                    reader.result()
                await asyncio.sleep(0.05)
        return [_ok("streaming", f"subscribed to {', '.join(stream.channels)}")]
    except SubscriptionFailed as exc:
        return [_fail("streaming", str(exc), "select the object for Change Data Capture in Setup (or deploy the "
                      "PlatformEventChannelMember files) and grant the integration user View All on it")]
    except (ReplayIdInvalid, AuthError, TimeoutError, Exception) as exc:
        return [_fail("streaming", f"{type(exc).__name__}: {exc}", "check network access to /cometd/")]
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await stream.aclose()


class StartupRefused(ConfigError):
    """`run` found what `check` reports as failed: the daemon does not start (exit code 3). A configuration
    error like any other, with `check`'s words."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        super().__init__(render_failures(checks))


def local_checks(settings: Settings, rules: Rules) -> list[Check]:
    """What needs no org: the data directory, the keys, the revocation sources, the templates. Blocking."""
    problems = preflight_profiles(rules)
    checks = check_data_dir(settings)
    checks += [_fail("signing keys", p, SIGNING_KEYS_FIX) for p in problems]
    if not problems:
        checks += check_revocation_sources(rules)
    return checks + check_templates(rules)


def refuse_on_failures(checks: list[Check]) -> None:
    failed = [c for c in checks if c.ok is False]
    if failed:
        raise StartupRefused(failed)


async def run_checks(settings: Settings, rules: Rules) -> list[Check]:
    checks = await asyncio.to_thread(check_data_dir, settings)
    checks += await asyncio.to_thread(check_signing, rules)
    checks += await asyncio.to_thread(check_revocation_sources, rules)
    checks += await asyncio.to_thread(check_templates, rules)
    checks += await check_timestamps(rules)
    async with SalesforceSession(settings) as session:
        checks += await check_org(settings, rules, session)
    return checks


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


def render_failures(checks: list[Check]) -> str:
    """The failed checks as `check` prints them (same words), for `run` refusing to start."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        if c.ok is False:
            lines.append(f"FAIL  {c.name.ljust(width)}  {c.detail}")
            if c.fix:
                lines.append(f"      {''.ljust(width)}  fix: {c.fix}")
    return "\n".join(lines)


def render_table(checks: list[Check]) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "skip"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{mark[c.ok]}  {c.name.ljust(width)}  {c.detail}")
        if c.ok is False and c.fix:
            lines.append(f"      {''.ljust(width)}  fix: {c.fix}")
    failed = sum(1 for c in checks if c.ok is False)
    lines.append("")
    lines.append("ready: every check passed" if not failed else f"not ready: {failed} check(s) failed")
    return "\n".join(lines)
