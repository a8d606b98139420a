"""`sfsign.salesforce.names` and the SFDX package in `salesforce-metadata/` say the same thing.

The package is parsed from its XML (custom objects and fields by `sfsign.metadata`, the reader the
emulator builds its org from; the flow's choices by `xml.etree` here), never found by scanning source
files. Both directions are checked: every name in the module is in the package with that type, length
and picklist values, and every custom field and object of the package is in the module. The mutation
tests below show each check fails when the package drifts.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from sfsign import metadata as md
from sfsign.archive import archive_transaction_id
from sfsign.documents.sign import SignatureLevel
from sfsign.outbox import JobState
from sfsign.salesforce import names
from sfsign.triggers import transaction_id

PACKAGE = Path(__file__).resolve().parents[3] / "salesforce-metadata"
DEFAULT = Path("force-app") / "main" / "default"
FLOW = DEFAULT / "flows" / "Send_for_Signature.flow-meta.xml"
Q = "{http://soap.sforce.com/2006/04/metadata}"
NAMESPACES = (names.Record, names.File, names.SignRequest, names.SignatureEvent)


def _namespace_names(namespace: type) -> dict[str, str]:
    return {k: v for k, v in vars(namespace).items() if k.isupper() and isinstance(v, str)}


def _flow_actions(package: Path) -> tuple[str | None, list[str]]:
    """The object the flow creates and the values of the choices its `Action` screen field offers."""
    root = ET.parse(package / FLOW).getroot()
    choices = {c.findtext(f"{Q}name"): c.findtext(f"{Q}value/{Q}stringValue") for c in root.iter(f"{Q}choices")}
    (action,) = [f for f in root.iter(f"{Q}fields") if f.findtext(f"{Q}name") == "Action"]
    offered = [choices.get(ref.text or "") or "" for ref in action.iterfind(f"{Q}choiceReferences")]
    (create,) = root.iterfind(f"{Q}recordCreates")
    return create.findtext(f"{Q}object"), offered


def _spec_mismatches(schema: md.Schema, spec: names.FieldSpec) -> list[str]:
    out = []
    for obj in spec.objects:
        fdef = schema.field(obj, spec.name)
        where = f"{obj}.{spec.name}"
        if fdef is None:
            out.append(f"{where}: not in the package")
            continue
        if fdef.type != spec.type:
            out.append(f"{where}: type {fdef.type} in the package, {spec.type} in names")
        if fdef.length != spec.length:
            out.append(f"{where}: length {fdef.length} in the package, {spec.length} in names")
        if spec.values and fdef.picklist_values != spec.values:
            out.append(f"{where}: picklist {list(fdef.picklist_values)} in the package, {list(spec.values)} in names")
        if fdef.reference_to != spec.reference_to:
            out.append(f"{where}: refers to {fdef.reference_to} in the package, {spec.reference_to} in names")
    return out


def vocabulary_mismatches(package: Path) -> list[str]:
    """Every way the package and `names` disagree, one line each; empty when they agree."""
    schema = md.load_schema(package)
    out: list[str] = []
    for spec in names.FIELDS:
        out += _spec_mismatches(schema, spec)
    declared = {(obj, spec.name) for spec in names.FIELDS for obj in spec.objects}
    for obj in schema.objects.values():
        out += [f"{obj.name}.{f}: in the package, not in names" for f in obj.fields if (obj.name, f) not in declared]
    package_objects = {o.name for o in schema.objects.values() if o.custom}
    out += [f"object {o}: not in the package" for o in set(names.CUSTOM_OBJECTS) - package_objects]
    out += [f"object {o}: in the package, not in names" for o in package_objects - set(names.CUSTOM_OBJECTS)]
    event_types = schema.field(names.SignatureEvent.NAME, names.SignatureEvent.EVENT_TYPE)
    written = {s.value for s in JobState} | set(names.AUDIT_ONLY_EVENT_TYPES) | set(names.ENVELOPE_EVENT_TYPES)
    if event_types is not None and set(event_types.picklist_values) != written:
        out.append(f"Event_Type__c: picklist {sorted(event_types.picklist_values)} in the package, "
                   f"{sorted(written)} written by sfsign")
    types, named = set(schema.notification_types), set(names.NOTIFICATION_TYPES)
    out += [f"notification type {n}: not in the package" for n in sorted(named - types)]
    out += [f"notification type {n}: in the package, not in names" for n in sorted(types - named)]
    created, offered = _flow_actions(package)
    if created != names.SignRequest.NAME:
        out.append(f"the flow publishes {created}, names says {names.SignRequest.NAME}")
    if offered != list(names.SIGN_REQUEST_ACTIONS):
        out.append(f"the flow offers actions {offered}, names has {list(names.SIGN_REQUEST_ACTIONS)}")
    return out


def test_names_and_the_package_agree() -> None:
    assert vocabulary_mismatches(PACKAGE) == []


def test_every_name_in_the_module_is_in_its_field_list() -> None:
    """A name added to a namespace without its spec would escape the comparison above."""
    listed = {spec.name for spec in names.FIELDS} | set(names.CUSTOM_OBJECTS)
    for namespace in NAMESPACES:
        unlisted = set(_namespace_names(namespace).values()) - listed
        assert not unlisted, f"{namespace.__name__}: {unlisted} missing from names.FIELDS"
    record_specs = [s for s in names.FIELDS if s.name in _namespace_names(names.Record).values()]
    assert all(set(names.SIGNED_OBJECTS) <= set(s.objects) for s in record_specs)
    file_specs = [s for s in names.FIELDS if s.name == names.File.TRANSACTION_ID]
    assert any("ContentVersion" in s.objects for s in file_specs)


def test_owned_fields_are_the_record_fields() -> None:
    assert names.OWNED_FIELDS == frozenset(_namespace_names(names.Record).values())


def test_envelope_events_keep_the_existing_values_first_and_in_order() -> None:
    """New event types are appended: reports and list views filtering on the old values keep working, and
    a value that already is a job state (`signed`) is not added twice."""
    field = md.load_schema(PACKAGE).field(names.SignatureEvent.NAME, names.SignatureEvent.EVENT_TYPE)
    assert field is not None
    before = {s.value for s in JobState} | set(names.AUDIT_ONLY_EVENT_TYPES)
    new = [v for v in names.ENVELOPE_EVENT_TYPES if v not in before]
    assert list(field.picklist_values[-len(new):]) == new
    assert set(field.picklist_values[: -len(new)]) == before
    assert names.EVENT_SIGNED == JobState.SIGNED.value


def test_the_notification_type_is_what_names_says() -> None:
    ntype = md.load_schema(PACKAGE).notification_types[names.NotificationType.SIGNATURE_OUTCOME]
    assert ntype.desktop and ntype.mobile, "the rep hears of it on the desktop and on the phone"
    assert 0 < len(ntype.label) <= 80 and 0 < len(ntype.master_label) <= 80


def test_values_sfsign_writes_fit_the_package_lengths() -> None:
    tx = transaction_id("00D" + "x" * 15, "Opportunity", "006" + "y" * 15, "r" * 200, "z" * 500)
    assert len(tx) <= names.TRANSACTION_ID_LENGTH
    assert len(archive_transaction_id(tx, "2031-01-01T00:00:00.000Z")) <= names.TRANSACTION_ID_LENGTH
    assert max(len(level.value) for level in SignatureLevel) <= names.LEVEL_LENGTH
    assert max(len(a) for a in names.SIGN_REQUEST_ACTIONS) <= names.ACTION_LENGTH
    assert names.LONG_TEXT_WRITE_MAX <= names.LONG_TEXT_LENGTH
    assert {names.STATUS_PENDING, names.STATUS_SIGNED, names.STATUS_ERROR} <= set(names.SIGN_STATUS_VALUES)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: fix the mutation"
    path.write_text(text.replace(old, new, 1))


FIELDS_DIR = DEFAULT / "objects"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: _edit(p / FIELDS_DIR / "Quote/fields/Sign_Transaction_Id__c.field-meta.xml",
                         "<length>64</length>", "<length>40</length>"),
         "Quote.Sign_Transaction_Id__c: length 40 in the package, 64 in names"),
        (lambda p: _edit(p / FIELDS_DIR / "Opportunity/fields/Sign_Signer__c.field-meta.xml",
                         "<type>Text</type>", "<type>TextArea</type>"),
         "Opportunity.Sign_Signer__c: type TextArea in the package, Text in names"),
        (lambda p: _edit(p / FIELDS_DIR / "Opportunity/fields/Sign_Status__c.field-meta.xml",
                         "<fullName>Voided</fullName>", "<fullName>Cancelled</fullName>"),
         "Opportunity.Sign_Status__c: picklist"),
        (lambda p: (p / FIELDS_DIR / "Quote/fields/Sign_Level__c.field-meta.xml").unlink(),
         "Quote.Sign_Level__c: not in the package"),
        (lambda p: shutil.copy(p / FIELDS_DIR / "Quote/fields/Sign_Level__c.field-meta.xml",
                               p / FIELDS_DIR / "ContentVersion/fields/Sign_Level__c.field-meta.xml"),
         "ContentVersion.Sign_Level__c: in the package, not in names"),
        (lambda p: _edit(p / FIELDS_DIR / "Signature_Event__c/fields/Event_Type__c.field-meta.xml",
                         "<fullName>superseded</fullName>", "<fullName>replaced</fullName>"),
         "Event_Type__c: picklist"),
        (lambda p: _edit(p / FIELDS_DIR / "Signature_Event__c/fields/Quote__c.field-meta.xml",
                         "<referenceTo>Quote</referenceTo>", "<referenceTo>Order</referenceTo>"),
         "Signature_Event__c.Quote__c: refers to Order in the package, Quote in names"),
        (lambda p: _edit(p / FLOW, "<stringValue>Reissue</stringValue>", "<stringValue>Re-issue</stringValue>"),
         "the flow offers actions ['Sign', 'Re-issue', 'Void', 'Resend']"),
        (lambda p: shutil.rmtree(p / FIELDS_DIR / "Sign_Request__e"),
         "object Sign_Request__e: not in the package"),
        (lambda p: _edit(p / FIELDS_DIR / "Signature_Event__c/fields/Event_Type__c.field-meta.xml",
                         "<fullName>code_failed</fullName>", "<fullName>wrong_code</fullName>"),
         "Event_Type__c: picklist"),
        (lambda p: _edit(p / FIELDS_DIR / "Opportunity/fields/Sign_Progress__c.field-meta.xml",
                         "<length>40</length>", "<length>20</length>"),
         "Opportunity.Sign_Progress__c: length 20 in the package, 40 in names"),
        (lambda p: (p / DEFAULT / "notificationtypes/sfsign_Signature_Outcome.notiftype-meta.xml").unlink(),
         "notification type sfsign_Signature_Outcome: not in the package"),
    ],
    ids=["length", "type", "picklist", "missing-field", "extra-field", "event-types", "lookup", "flow-action",
         "missing-object", "envelope-event", "new-field-length", "missing-notification-type"],
)
def test_a_drifted_package_is_reported(tmp_path: Path, mutate: Callable[[Path], object], expected: str) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy)
    mutate(copy)
    found = vocabulary_mismatches(copy)
    assert any(line.startswith(expected) for line in found), found
