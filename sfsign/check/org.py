"""The checks against the org, as the integration user: login, API version, the sfsign package's schema,
the rules against the org's own fields, picklists and record types, field access, the daemon's queries
and the streaming subscription.

They send the same SOQL and open the same subscription the daemon does (`SalesforceSession`), so "check
passes" means "the daemon will work". `check_rules` is also what `run` and a reload judge the rules by.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sfsign.check.report import Check, fail, ok
from sfsign.check.signers import check_signers
from sfsign.config import SFSIGN_OWNED_FIELDS, Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.metadata import MetadataError, load_schema
from sfsign.rule_fields import template_field_problems, watch_problems
from sfsign.salesforce.errors import AuthError, SalesforceError
from sfsign.salesforce.names import File, SignatureEvent, SignRequest
from sfsign.salesforce.notifications import NotificationTypeMissing
from sfsign.salesforce.records import opportunity_select, quote_select
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import ReplayIdInvalid, SubscriptionFailed

# Metadata API field types → the type `describe` reports for them.
DESCRIBE_TYPES = {
    "Text": "string", "Picklist": "picklist", "Url": "url", "DateTime": "datetime", "Date": "date",
    "LongTextArea": "textarea", "TextArea": "textarea", "Checkbox": "boolean", "Number": "double",
    "Lookup": "reference", "MasterDetail": "reference", "Email": "email", "Phone": "phone",
    "Currency": "currency", "Percent": "percent", "AutoNumber": "string",
}
SELECTS = {"Opportunity": opportunity_select, "Quote": quote_select}
CHANNEL_FIX = ("select the object for Change Data Capture in Setup (or deploy the PlatformEventChannelMember files) "
               "and grant the integration user View All on it")


async def check_org(settings: Settings, rules: Rules, session: SalesforceSession) -> list[Check]:
    out: list[Check] = []
    try:
        token = await session.login()
    except AuthError as exc:
        return [fail("login", str(exc), exc.fix or "check SFSIGN_LOGIN_URL, the consumer key, the username and "
                      "that the connected app is pre-authorized for the user (docs/salesforce-setup.md)")]
    out.append(ok("login", f"{settings.auth_flow} as {settings.username or 'the run-as user'}, org {token.org_id}"))
    rest = session.rest
    try:
        version = api_version_check(settings.api_version, await rest.versions())
        out.append(version)
        if version.ok:  # else every versioned call fails the same way: one clear failure, not ten
            out += await _check_schema(rest, rules)
            out += await check_rules(rest, rules)
            out += await check_access(rest, rules, settings.multi_currency)
            out.append(await check_notification_type(rest, settings.notification_type))
            out += await _check_queries(rest, rules, settings.multi_currency)
    except SalesforceError as exc:  # the checks above raise only what they cannot judge: outages, limits
        fix = ("Salesforce did not answer this time (an outage or a limit); run `sfsign check` again"
               if exc.transient else "check the integration user's profile: API Enabled")
        out.append(fail("REST API", str(exc), fix))
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
        return fail("API version", "the org lists no API versions at /services/data/",
                     "check SFSIGN_LOGIN_URL points at the org's My Domain")
    newest = max(served, key=_version_key)
    if configured not in served:
        return fail("API version", f"{configured} is not served by this org (it serves up to {newest})",
                     f"set SFSIGN_API_VERSION={newest}")
    if _version_key(configured) < _version_key(newest):
        return ok("API version", f"{configured}; warning: the org serves up to {newest}, "
                                  f"consider SFSIGN_API_VERSION={newest}")
    return ok("API version", f"{configured} (the org's highest)")


async def _check_schema(rest: SalesforceRest, rules: Rules) -> list[Check]:
    try:
        package = load_schema()
    except MetadataError as exc:
        return [fail("sfsign package", str(exc), "set SFSIGN_METADATA_DIR to salesforce-metadata/")]
    out = []
    objects = [*sorted({r.object for r in rules.rules}), "ContentVersion", SignatureEvent.NAME, SignRequest.NAME]
    for sobject in objects:
        try:
            describe = await rest.describe(sobject)
        except SalesforceError as exc:
            if exc.transient:
                raise  # one outage line from check_org, not a wrong fix per object
            out.append(fail(f"object {sobject}", str(exc),
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
            out.append(fail(f"object {sobject}", "; ".join(problems),
                             "deploy salesforce-metadata/ (sf project deploy start) and assign the "
                             "sfsign_Integration permission set to the integration user"))
        else:
            out.append(ok(f"object {sobject}", f"{len(expected.fields) if expected else 0} sfsign fields present"))
    return out


def _record_types_check(rules: Rules, sobject: str, describe: dict[str, Any]) -> Check:
    """The rules' `record_types` against describe's recordTypeInfos: the check `run` refuses to start on."""
    from sfsign.rule_fields import record_type_problems

    problems = record_type_problems(rules, sobject, describe)
    if problems:
        return fail(f"record types {sobject}", "\n".join(problems),
                     "correct the rules file at the lines named, or create or activate the record types")
    names = sorted({n for r in rules.for_object(sobject) for n in r.record_types or ()})
    return ok(f"record types {sobject}", f"the rules' record types exist and are active: {', '.join(names)}")


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
            out.append(fail(f"access {sobject}", f"the integration user cannot see {sobject}: {exc}", ACCESS_FIX))
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
            out.append(fail(f"access {sobject}", "; ".join(problems), ACCESS_FIX))
        else:
            what = [f"reads {len(reads.get(sobject, ()))} field(s)"] if sobject in reads else []
            if mode and written:
                what.append(f"{'creates' if mode == 'create' else 'edits'} {len(written)} field(s)")
            out.append(ok(f"access {sobject}", " and ".join(what) or "visible"))
    return out


NOTIFICATION_CHECK = "notification type"


async def check_notification_type(rest: SalesforceRest, developer_name: str) -> Check:
    """The custom notification type the record owner hears from sfsign by (refused, expired, completed) is in
    the org and visible to the integration user: looked up as the daemon looks it up, by DeveloperName. Not
    run when the setting is empty (no notifications). `run` refuses to start on the same finding."""
    if not developer_name:
        return Check(NOTIFICATION_CHECK, None, "SFSIGN_NOTIFICATION_TYPE is empty: no custom notifications")
    try:
        ntype = await rest.notification_type(developer_name)
    except NotificationTypeMissing as exc:
        return fail(NOTIFICATION_CHECK, exc.message,
                    "deploy salesforce-metadata/ (it holds the notification type), or set SFSIGN_NOTIFICATION_TYPE")
    except SalesforceError as exc:
        if exc.transient:
            raise  # one outage line from check_org
        return fail(NOTIFICATION_CHECK, f"cannot read CustomNotificationType: {exc}", ACCESS_FIX)
    return ok(NOTIFICATION_CHECK, f"{ntype.developer_name} ({ntype.label}, {ntype.id})")


RULE_VALUES_FIX = ("correct the rule's values to the picklist's API values, or its field to the org's API "
                   "name, at the lines named (rules file); or add the value to the picklist")


RULE_FIELDS_FIX = "correct the rules file at the lines named, or deploy the fields"


async def check_rules(rest: SalesforceRest, rules: Rules) -> list[Check]:
    """The rules against the org's own schema, one describe per object: the watched fields and their trigger
    values exist (a typo would start "ready" and never fire), the fields listed for templates can be
    read, and the rules' signers exist (`check/signers.py`). One list for `check` to print, `run` to refuse
    to start on (exit code 3), and a reload to refuse."""
    out = []
    field_problems = []
    describes: dict[str, dict[str, Any]] = {}
    for sobject in sorted({r.object for r in rules.rules}):
        try:
            describe = describes[sobject] = await rest.describe(sobject)
        except SalesforceError as exc:
            if exc.transient:
                raise  # an outage says nothing about the rules: the caller waits it out or reports it
            out.append(fail(f"rules on {sobject}", str(exc), f"give the integration user access to {sobject}"))
            continue
        problems = watch_problems(rules, sobject, describe)
        if problems:
            out.append(fail(f"rules on {sobject}", "\n".join(problems), RULE_VALUES_FIX))
        else:
            out.append(ok(f"rules on {sobject}", "every rule's field and values exist"))
        if rules.uses_record_types(sobject):
            out.append(_record_types_check(rules, sobject, describe))
        found = template_field_problems(rules, sobject, describe)
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
        out.append(fail("rule fields", "\n".join(field_problems), RULE_FIELDS_FIX))
    return out + await check_signers(rest, rules, describes)


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
            out.append(fail(f"read {sobject}", str(exc), fix))
            continue
        out.append(ok(f"read {sobject}", "record, account, contact and line items are readable"))
    return out


async def _check_streaming(rules: Rules, session: SalesforceSession) -> list[Check]:
    """Subscribe as the daemon does (its stream settings); only from the live position, as nothing is read."""
    if session.settings.transport == "pubsub":
        return await _check_pubsub(rules, session)
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
        return [ok("streaming", f"CometD (SFSIGN_TRANSPORT=cometd): subscribed to {', '.join(stream.channels)}")]
    except SubscriptionFailed as exc:
        return [fail("streaming", str(exc), CHANNEL_FIX)]
    except (ReplayIdInvalid, AuthError, TimeoutError, Exception) as exc:
        return [fail("streaming", f"{type(exc).__name__}: {exc}", "check network access to /cometd/")]
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await stream.aclose()


async def _check_pubsub(rules: Rules, session: SalesforceSession) -> list[Check]:
    """Pub/Sub: each channel's topic exists and this user may subscribe (`GetTopic`), and its event schema is
    readable (`GetSchema`), over the TLS connection and session headers the daemon uses; one line per channel."""
    target = session.settings.pubsub_url
    stream = session.open_pubsub(rules.channels(), replay_source=lambda _c: None)
    out: list[Check] = []
    try:
        for channel in stream.channels:
            name = f"streaming {channel}"
            try:
                topic = await stream.get_topic(channel)
                if not topic.can_subscribe:
                    out.append(fail(name, f"Pub/Sub GetTopic: this user cannot subscribe to {channel}", CHANNEL_FIX))
                    continue
                schema = await stream.get_schema(topic.schema_id)
            except SubscriptionFailed as exc:
                out.append(fail(name, str(exc), CHANNEL_FIX))
                continue
            except Exception as exc:  # Recover (retry, auth, long) and anything the network says
                out.append(fail(name, f"{type(exc).__name__}: {exc}",
                                f"check network access to {target} (gRPC over TLS; port 7443, or 443) and "
                                "that the org has the Pub/Sub API"))
                continue
            out.append(ok(name, f"Pub/Sub (SFSIGN_TRANSPORT=pubsub) at {target}: topic can be subscribed to, "
                                f"event schema {schema.name} ({topic.schema_id}) readable"))
        return out
    finally:
        await stream.aclose()
