"""`sfsign render`: preview a rule's template on a real record, through the daemon's own fetch, mapping
and render code, so what the admin sees is what the daemon would sign. Nothing is signed, uploaded or
written back, and no job is created: the preview only reads from Salesforce.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sfsign.config import RuleConfig, Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.documents import jobs as doc_jobs
from sfsign.mapping import NotRenderable, build_document
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.ids import InvalidId, canonical_id
from sfsign.salesforce.record_parsing import fetch_records
from sfsign.salesforce.records import SignableRecord
from sfsign.salesforce.rest import SalesforceRest
from sfsign.triggers import KEY_PREFIXES

ID_FIX = ("copy the id from the record's address in Salesforce (the 15 or 18 characters after /Opportunity/ or "
          "/Quote/, e.g. 006Dn000004C9bHIAS) and check it is the record you mean")
PREVIEW_TRANSACTION = "PREVIEW - NOT SIGNED"  # printed in the footer where the transaction id goes


class PreviewError(Exception):
    """The preview cannot be made; the message says why and what to do."""


def candidate_objects(record_id: str, rules: Rules, rule: RuleConfig | None) -> list[str]:
    """Objects the record may belong to: the rule's, else the id's key prefix, else every ruled object."""
    if rule is not None:
        return [rule.object]
    by_prefix = KEY_PREFIXES.get(record_id[:3])
    if by_prefix is not None:
        return [by_prefix]
    return list(dict.fromkeys(r.object for r in rules.rules))


async def _find_record(
    rest: SalesforceRest, record_id: str, objects: list[str], multi_currency: bool, rules: Rules
) -> SignableRecord | None:
    for sobject in objects:
        found = await fetch_records(rest, sobject, [record_id], multi_currency=multi_currency,
                                    extra=rules.fields_for(sobject))
        record = found.get(record_id) or found.get(record_id[:15])
        if record is not None:
            return record
    return None


async def render_preview(settings: Settings, rules: Rules, record_id: str, rule_name: str | None = None) -> bytes:
    """The unsigned PDF the rule's template makes of the record (default rule: the first of its object)."""
    try:
        record_id = canonical_id(record_id)  # the checksum too: Salesforce answers a bad one with a 400
    except InvalidId as exc:
        raise PreviewError(f"{exc}; {ID_FIX}") from None
    rule = rules.by_name(rule_name) if rule_name else None
    if rule_name and rule is None:
        raise PreviewError(f"no rule {rule_name!r} in {rules.source}; rules: {', '.join(r.name for r in rules.rules)}")
    objects = candidate_objects(record_id, rules, rule)
    if not any(rules.for_object(o) for o in objects):
        raise PreviewError(f"no rule in {rules.source} handles {', '.join(objects)} records")
    async with SalesforceSession(settings) as session:
        try:
            record = await _find_record(session.rest, record_id, objects, settings.multi_currency, rules)
        except SalesforceError as exc:
            raise PreviewError(f"Salesforce could not look up {record_id}: {exc}; {ID_FIX}") from None
    if record is None:
        raise PreviewError(f"no {' or '.join(objects)} record {record_id} is visible to the integration user; "
                           f"{ID_FIX}, and that the integration user can read it")
    if rule is None:
        rule = rules.for_object(record.sobject)[0]
    try:
        document = build_document(record, rule, rules, PREVIEW_TRANSACTION, datetime.now(UTC))
    except NotRenderable as exc:
        raise PreviewError(f"the daemon could not sign this record: {exc}") from None
    template = str(rules.templates[rule.name])
    try:
        pdf, _boxes, _notes = await asyncio.get_running_loop().run_in_executor(
            None, doc_jobs.render_job, document.model_dump_json(), template
        )
    except doc_jobs.DocumentFailure as exc:
        raise PreviewError(str(exc)) from None
    return pdf
