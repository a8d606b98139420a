"""The SFDX package in `salesforce-metadata/` is deployable and agrees with the daemon's code.

Allowed values come from the Metadata API Developer Guide (API 62.0), cited per table:
- CustomField: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/customfield.htm
- CustomObject: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/customobject.htm
- PermissionSet: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_permissionset.htm
- PlatformEventChannelMember:
  https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_platformeventchannelmember.htm
- QuickAction: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/quickaction.htm
- Flow: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_visual_workflow.htm
- Layout: https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_layouts.htm
- CompactLayout (at most 10 fields):
  https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_compactlayout.htm
- CustomNotificationType (customNotifTypeName and masterLabel at most 80 characters, description 255):
  https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_customnotificationtype.htm
- Custom Notification Actions (the Send Custom Notifications user permission, needed for REST calls):
  https://developer.salesforce.com/docs/atlas.en-us.api_action.meta/api_action/actions_obj_custom_notification.htm
- CDC subscriber permissions (View All Records per object):
  https://developer.salesforce.com/docs/platform/change-data-capture/guide/cdc-security-perms.html
Element names, order and required elements are checked against the WSDL by `scripts/validate-metadata.sh`.
That the daemon's names, lengths and picklist values agree with the package is test_names_vocabulary.py's.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sfsign import metadata as md
from sfsign.config import SFSIGN_OWNED_FIELDS
from sfsign.emulator.schema import build_org_schema
from sfsign.outbox import JobState
from sfsign.salesforce import names

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "salesforce-metadata"
DEFAULT = PACKAGE / "force-app" / "main" / "default"
NS = "http://soap.sforce.com/2006/04/metadata"
Q = f"{{{NS}}}"

# Source format: (folder under default/, file suffix) for each root element (sfdx source-deploy-retrieve
# registry: directoryName + suffix).
SOURCE_FORMAT = {
    "CustomField": ("fields", ".field-meta.xml"),
    "CustomObject": ("objects", ".object-meta.xml"),
    "PermissionSet": ("permissionsets", ".permissionset-meta.xml"),
    "PlatformEventChannelMember": ("platformEventChannelMembers", ".platformEventChannelMember-meta.xml"),
    "QuickAction": ("quickActions", ".quickAction-meta.xml"),
    "Flow": ("flows", ".flow-meta.xml"),
    "Layout": ("layouts", ".layout-meta.xml"),
    "FlexiPage": ("flexipages", ".flexipage-meta.xml"),
    "CompactLayout": ("compactLayouts", ".compactLayout-meta.xml"),
    "CustomNotificationType": ("notificationtypes", ".notiftype-meta.xml"),
}

# CustomField `type` (FieldType enumeration).
FIELD_TYPES = frozenset({
    "AutoNumber", "Lookup", "MasterDetail", "MetadataRelationship", "Checkbox", "Currency", "Date", "DateTime",
    "Email", "EncryptedText", "ExternalLookup", "IndirectLookup", "Number", "Percent", "Phone", "Picklist",
    "MultiselectPicklist", "Summary", "Text", "TextArea", "LongTextArea", "Url", "Hierarchy", "File", "Html",
    "Location", "Time",
})
# Elements each type needs, and the ones it may not carry except as `false` (the API rejects them).
REQUIRED_ATTRS = {
    "Text": {"length"},
    "LongTextArea": {"length", "visibleLines"},
    "Lookup": {"referenceTo", "relationshipName", "deleteConstraint"},
    "Picklist": {"valueSet"},
    "Number": {"precision", "scale"},
}
FORBIDDEN_ATTRS = {
    "Url": {"length", "unique", "externalId"},
    "DateTime": {"length", "unique"},
    "Picklist": {"length", "unique", "externalId"},
    "LongTextArea": {"unique", "externalId", "required"},
}
DELETE_CONSTRAINTS = frozenset({"SetNull", "Restrict", "Cascade"})
TEXT_MAX = 255
LONG_TEXT_RANGE = (256, 131072)
QUICK_ACTION_TYPES = frozenset({
    "Create", "VisualforcePage", "Post", "SendEmail", "LogACall", "SocialPost", "Canvas", "Update",
    "LightningComponent", "Flow", "LightningWebComponent",
})
LAYOUT_BEHAVIORS = frozenset({"Edit", "Required", "Readonly"})
LAYOUT_STYLES = frozenset({"TwoColumnsTopToBottom", "TwoColumnsLeftToRight", "OneColumn", "CustomLinks"})
SHARING_MODELS = frozenset({"Private", "Read", "ReadWrite", "ReadWriteTransfer", "FullAccess", "ControlledByParent"})

SIGN_OBJECTS = ("Opportunity", "Quote")


def _xml_files() -> list[Path]:
    return sorted(DEFAULT.rglob("*-meta.xml"))


def _root(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(f"{Q}{tag}")
    return child.text if child is not None else None


@pytest.fixture(scope="module")
def schema() -> md.Schema:
    return md.load_schema(PACKAGE)


def test_package_is_an_sfdx_project() -> None:
    import json

    project = json.loads((PACKAGE / "sfdx-project.json").read_text())
    assert [d["path"] for d in project["packageDirectories"]] == ["force-app"]
    assert re.fullmatch(r"\d+\.0", project["sourceApiVersion"])
    assert len(_xml_files()) >= 40


@pytest.mark.parametrize("path", _xml_files(), ids=lambda p: str(p.relative_to(DEFAULT)))
def test_every_file_is_well_formed_metadata_named_as_source_format_expects(path: Path) -> None:
    root = _root(path)
    assert root.tag.startswith(Q), f"{path.name}: root not in the metadata namespace"
    kind = root.tag[len(Q):]
    assert kind in SOURCE_FORMAT, f"{path.name}: unexpected metadata type {kind}"
    folder, suffix = SOURCE_FORMAT[kind]
    assert path.name.endswith(suffix)
    rel = path.relative_to(DEFAULT).parts
    if kind in ("CustomField", "CompactLayout"):  # children of an object: objects/X/<folder>/
        assert rel[0] == "objects" and rel[2] == folder
        assert _text(root, "fullName") == path.name.removesuffix(suffix)
    elif kind == "CustomObject":
        assert rel[0] == folder and rel[1] == path.name.removesuffix(suffix), "objects/X/X.object-meta.xml"
    else:
        assert rel[0] == folder and len(rel) == 2
    for el in root.iter():
        assert el.tag.startswith(Q), f"{path.name}: {el.tag} outside the metadata namespace"


def _field_files() -> list[Path]:
    return sorted(DEFAULT.glob("objects/*/fields/*.field-meta.xml"))


@pytest.mark.parametrize("path", _field_files(), ids=lambda p: f"{p.parts[-3]}.{p.parts[-1].split('.')[0]}")
def test_field_types_and_attributes_use_allowed_values(path: Path) -> None:
    root = _root(path)
    ftype = _text(root, "type") or ""
    assert ftype in FIELD_TYPES
    present = {el.tag[len(Q):] for el in root}
    assert {"fullName", "label", "type"} <= present
    assert REQUIRED_ATTRS.get(ftype, set()) <= present, f"{ftype} needs {REQUIRED_ATTRS[ftype] - present}"
    for tag in FORBIDDEN_ATTRS.get(ftype, set()) & present:
        assert _text(root, tag) == "false", f"{ftype} may not carry {tag}"
    label = _text(root, "label") or ""
    assert 0 < len(label) <= 40, "field labels are at most 40 characters"
    for tag in ("required", "unique", "externalId", "caseSensitive", "trackTrending"):
        assert _text(root, tag) in (None, "true", "false")
    length = int(_text(root, "length") or 0)
    if ftype == "Text":
        assert 1 <= length <= TEXT_MAX
    if ftype == "LongTextArea":
        assert LONG_TEXT_RANGE[0] <= length <= LONG_TEXT_RANGE[1]
        assert 1 <= int(_text(root, "visibleLines") or 0) <= 50
    if ftype == "Lookup":
        assert _text(root, "deleteConstraint") in DELETE_CONSTRAINTS
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", _text(root, "relationshipName") or "")
        assert "__" not in (_text(root, "relationshipName") or "")
    if ftype == "Picklist":
        values = [_text(v, "fullName") for v in root.iterfind(f"{Q}valueSet/{Q}valueSetDefinition/{Q}value")]
        assert values and len(values) == len(set(values))
        definition = root.find(f"{Q}valueSet/{Q}valueSetDefinition")
        assert definition is not None and _text(definition, "sorted") in ("true", "false")
    if _text(root, "unique") == "true" or _text(root, "externalId") == "true":
        assert ftype in ("Text", "Number", "Email", "AutoNumber"), "only these can be unique or external ids"


def test_issue_fields_exist_with_the_promised_types(schema: md.Schema) -> None:
    for obj in SIGN_OBJECTS:
        fields = schema.objects[obj].fields
        tx = fields["Sign_Transaction_Id__c"]
        assert (tx.type, tx.length, tx.external_id, tx.unique) == ("Text", 64, True, True)
        status = fields["Sign_Status__c"]
        assert status.type == "Picklist" and status.restricted_picklist
        assert set(status.picklist_values) == {"Pending", "Signed", "Error", "Sent", "Viewed", "Completed",
                                               "Refused", "Expired", "Voided"}
        assert fields["Sign_Error__c"].type == "LongTextArea"
        assert fields["Signed_At__c"].type == "DateTime"
        assert fields["Signed_Document_Url__c"].type == "Url"
        assert fields["Sign_Document_Hash__c"].length == 64  # SHA-256 in hex
    assert schema.field("ContentVersion", "Sign_Transaction_Id__c").external_id  # type: ignore[union-attr]
    assert set(schema.objects["Sign_Request__e"].fields) == {"RecordId__c", "Rule__c", "RequestedById__c",
                                                             "Reason__c", "Action__c"}


def test_signature_event_object_is_an_audit_trail(schema: md.Schema) -> None:
    obj = schema.objects["Signature_Event__c"]
    assert obj.custom and obj.sharing_model in SHARING_MODELS
    assert obj.name_field is not None and obj.name_field.type == "AutoNumber"
    assert obj.name_field.display_format and "{0" in obj.name_field.display_format
    types = {n: f.type for n, f in obj.fields.items()}
    assert types == {"Opportunity__c": "Lookup", "Quote__c": "Lookup", "Transaction_Id__c": "Text",
                     "Event_Type__c": "Picklist", "Occurred_At__c": "DateTime", "Actor__c": "Text",
                     "Detail__c": "LongTextArea"}
    assert obj.fields["Opportunity__c"].reference_to == "Opportunity"
    assert obj.fields["Quote__c"].reference_to == "Quote"
    # The daemon writes its job states as event types as they are.
    assert {s.value for s in JobState} <= set(obj.fields["Event_Type__c"].picklist_values)
    opportunity_tx = schema.objects["Opportunity"].fields["Sign_Transaction_Id__c"]
    assert obj.fields["Transaction_Id__c"].length == opportunity_tx.length


def test_cdc_selection_covers_the_objects_sfsign_watches(schema: md.Schema) -> None:
    assert set(schema.cdc_entities) == set(SIGN_OBJECTS)
    for path in DEFAULT.glob("platformEventChannelMembers/*"):
        root = _root(path)
        entity = _text(root, "selectedEntity")
        assert path.name == f"ChangeEvents_{entity}.platformEventChannelMember-meta.xml"


# ---------------------------------------------------------------------------------------- permissions


def _package_field_names(schema: md.Schema) -> set[str]:
    return {f"{o.name}.{f}" for o in schema.objects.values() for f in o.fields}


def test_integration_permission_set_can_do_what_the_daemon_does(schema: md.Schema) -> None:
    pset = schema.permission_sets["sfsign_Integration"]
    fields = pset.field_permissions
    for obj in SIGN_OBJECTS:
        for name in SFSIGN_OWNED_FIELDS:
            fp = fields[f"{obj}.{name}"]
            assert fp.readable and fp.editable, f"{obj}.{name}"
        perm = pset.object_permissions[obj]
        assert perm.allow_read and perm.allow_edit and perm.view_all_records, "CDC needs View All Records"
        assert not (perm.allow_delete or perm.modify_all_records)
    assert fields["ContentVersion.Sign_Transaction_Id__c"].editable
    events = pset.object_permissions["Signature_Event__c"]
    assert events.allow_create and events.allow_read and not events.allow_delete
    for name in schema.objects["Signature_Event__c"].fields:
        assert fields[f"Signature_Event__c.{name}"].editable
    assert pset.object_permissions["Sign_Request__e"].allow_read, "subscribing to /event/Sign_Request__e"
    for parent in ("Account", "Contact", "Product2"):
        assert pset.object_permissions[parent].allow_read
    assert "ApiEnabled" in pset.user_permissions
    assert names.SEND_CUSTOM_NOTIFICATIONS_PERMISSION in pset.user_permissions, "the REST notification action"


def test_viewer_permission_set_reads_everything_and_edits_nothing(schema: md.Schema) -> None:
    pset = schema.permission_sets["sfsign_Viewer"]
    integration = schema.permission_sets["sfsign_Integration"]
    package_fields = _package_field_names(schema)
    assert set(pset.field_permissions) == set(integration.field_permissions) & package_fields
    assert all(fp.readable and not fp.editable for fp in pset.field_permissions.values())
    for name, perm in pset.object_permissions.items():
        assert not (perm.allow_edit or perm.allow_delete or perm.modify_all_records or perm.view_all_records), name
        assert not perm.allow_create or name == "Sign_Request__e", "publishing a Sign Request is the only create"


@pytest.mark.parametrize("name", ["sfsign_Integration", "sfsign_Viewer"])
def test_permission_sets_name_only_permissionable_package_fields(schema: md.Schema, name: str) -> None:
    """Package fields must exist and be optional; standard fields must be permissionable in the org's
    describe (required and formula fields such as Opportunity.CloseDate fail the deploy)."""
    pset = schema.permission_sets[name]
    known = _package_field_names(schema)
    org = build_org_schema(schema)
    for fname in pset.field_permissions:
        obj, field = fname.split(".")
        if fname not in known:
            spec = org.objects[obj].field(field) if obj in org.objects else None
            assert spec is not None, f"{name} grants {fname}, which neither the package nor the org defines"
            assert spec.permissionable, f"{name} grants {fname}, which takes no field permission"
            continue
        fdef = schema.field(obj, field)
        assert fdef is not None and not fdef.required, "required fields cannot carry field permissions"
        assert not schema.objects[obj].is_platform_event, "platform event fields have no field-level security"
    for perm in pset.object_permissions.values():
        if perm.allow_edit or perm.view_all_records or perm.allow_create:
            assert perm.allow_read, f"{perm.object}: edit, create and view all depend on read"


# ------------------------------------------------------------------------- emulator, layouts, actions


def test_emulator_builds_its_schema_from_the_package(schema: md.Schema) -> None:
    org = build_org_schema(schema)
    event = org.objects["Signature_Event__c"].describe("68.0")
    by_name = {f["name"]: f for f in event["fields"]}
    assert by_name["Name"]["autoNumber"] and not by_name["Name"]["createable"]
    assert by_name["Opportunity__c"]["type"] == "reference"
    assert by_name["Opportunity__c"]["relationshipName"] == "Opportunity__r"
    assert by_name["Detail__c"]["type"] == "textarea" and by_name["Detail__c"]["length"] == 32768
    assert by_name["Event_Type__c"]["restrictedPicklist"]
    children = {r["relationshipName"]: r["childSObject"]
                for r in org.objects["Opportunity"].describe("68.0")["childRelationships"]}
    assert children["Signature_Events__r"] == "Signature_Event__c"


def _layouts() -> list[Path]:
    return sorted(DEFAULT.glob("layouts/*.layout-meta.xml"))


@pytest.mark.parametrize("path", _layouts(), ids=lambda p: p.name)
def test_layouts_name_real_fields_and_show_the_signature_section(schema: md.Schema, path: Path) -> None:
    obj_name = path.name.split("-", 1)[0]
    org_obj = build_org_schema(schema).objects[obj_name]
    root = _root(path)
    sections = {}
    for section in root.iterfind(f"{Q}layoutSections"):
        assert _text(section, "style") in LAYOUT_STYLES
        items = section.findall(f"{Q}layoutColumns/{Q}layoutItems")
        sections[_text(section, "label")] = [_text(i, "field") for i in items]
        for item in items:
            assert _text(item, "behavior") in LAYOUT_BEHAVIORS
            assert org_obj.field(_text(item, "field") or "") is not None, f"{obj_name}.{_text(item, 'field')}"
    if obj_name in SIGN_OBJECTS:
        customer = {names.Record.PROGRESS, names.Record.SENT_AT, names.Record.EXPIRES_AT, names.Record.COMPLETED_AT,
                    names.Record.DECLINE_REASON}
        assert set(sections["Customer Signature"]) == customer, "what a rep follows an envelope by"
        assert set(sections["Signature"]) | customer == SFSIGN_OWNED_FIELDS
        labels = list(sections)
        assert labels.index("Customer Signature") < labels.index("Signature"), "above the seal's details"
        related = [_text(r, "relatedList") for r in root.iterfind(f"{Q}relatedLists")]
        assert f"Signature_Event__c.{obj_name}__c" in related
        actions = [_text(a, "actionName") for a in root.iterfind(f"{Q}platformActionList/{Q}platformActionListItems")]
        assert f"{obj_name}.Send_for_Signature" in actions


def test_send_for_signature_action_publishes_a_sign_request(schema: md.Schema) -> None:
    flow = _root(DEFAULT / "flows/Send_for_Signature.flow-meta.xml")
    assert _text(flow, "processType") == "Flow", "a screen flow, launchable from a quick action"
    inputs = {_text(v, "name"): _text(v, "isInput") for v in flow.iterfind(f"{Q}variables")}
    assert inputs["recordId"] == "true", "quick actions pass the record id in `recordId`"
    (create,) = flow.findall(f"{Q}recordCreates")
    assert _text(create, "object") == "Sign_Request__e"
    assigned = {_text(a, "field") for a in create.iterfind(f"{Q}inputAssignments")}
    assert "RecordId__c" in assigned and assigned <= set(schema.objects["Sign_Request__e"].fields)
    element_names = {_text(e, "name") for e in flow if _text(e, "name")}
    for ref in flow.iterfind(f".//{Q}targetReference"):
        assert ref.text in element_names
    for obj in SIGN_OBJECTS:
        action = _root(DEFAULT / f"quickActions/{obj}.Send_for_Signature.quickAction-meta.xml")
        assert _text(action, "type") in QUICK_ACTION_TYPES and _text(action, "type") == "Flow"
        assert _text(action, "flowDefinition") == "Send_for_Signature"
        assert _text(action, "optionsCreateFeedItem") in ("true", "false")


def _compact_layouts() -> list[Path]:
    return sorted(DEFAULT.glob("objects/*/compactLayouts/*.compactLayout-meta.xml"))


def test_each_signed_object_has_a_compact_layout_with_the_envelope_at_a_glance() -> None:
    assert {p.parts[-3] for p in _compact_layouts()} == set(SIGN_OBJECTS)


@pytest.mark.parametrize("path", _compact_layouts(), ids=lambda p: p.parts[-3])
def test_compact_layouts_name_real_fields(schema: md.Schema, path: Path) -> None:
    obj_name = path.parts[-3]
    org_obj = build_org_schema(schema).objects[obj_name]
    root = _root(path)
    assert _text(root, "fullName") == path.name.removesuffix(".compactLayout-meta.xml")
    fields = [f.text or "" for f in root.iterfind(f"{Q}fields")]
    assert 0 < len(fields) <= 10 and len(fields) == len(set(fields))
    for name in fields:
        assert org_obj.field(name) is not None, f"{obj_name}.{name}"
    assert {names.Record.STATUS, names.Record.PROGRESS, names.Record.EXPIRES_AT} <= set(fields)
    assert 0 < len(_text(root, "label") or "") <= 80


def test_notification_type_is_deployable() -> None:
    (path,) = DEFAULT.glob("notificationtypes/*.notiftype-meta.xml")
    root = _root(path)
    for tag in ("customNotifTypeName", "desktop", "masterLabel", "mobile"):  # required by the Metadata API
        assert _text(root, tag), tag
    assert len(_text(root, "customNotifTypeName") or "") <= 80 and len(_text(root, "masterLabel") or "") <= 80
    assert len(_text(root, "description") or "") <= 255
    assert _text(root, "desktop") == "true" and _text(root, "mobile") == "true"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", path.name.removesuffix(".notiftype-meta.xml"))
