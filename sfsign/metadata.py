"""Reads the SFDX package in `salesforce-metadata/` into a typed schema.

This is the one piece of code the daemon and the emulator share: the package an admin deploys is the
single source of truth for sfsign's custom fields, so the emulator builds its org from it and a field
the daemon writes but the package lacks fails in tests exactly as it would fail in a real org.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

NS = {"md": "http://soap.sforce.com/2006/04/metadata"}


class MetadataError(ValueError):
    """The SFDX package is malformed; the message names the file."""


@dataclass(frozen=True)
class FieldDef:
    """One field as the Metadata API describes it (`CustomField`)."""

    object_name: str
    name: str
    label: str
    type: str  # Metadata API type: Text, Picklist, Url, DateTime, LongTextArea, Lookup, Number, ...
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    required: bool = False
    unique: bool = False
    external_id: bool = False
    picklist_values: tuple[str, ...] = ()
    restricted_picklist: bool = False
    reference_to: str | None = None
    relationship_name: str | None = None  # Lookup/MasterDetail: the child relationship name (parent -> children)
    relationship_label: str | None = None
    delete_constraint: str | None = None  # Lookup: SetNull, Restrict, Cascade
    visible_lines: int | None = None
    display_format: str | None = None  # AutoNumber: e.g. SE-{00000000}
    case_sensitive: bool = False
    description: str = ""

    @property
    def parent_relationship_name(self) -> str | None:
        """The name a child uses to reach its parent in SOQL (`Opportunity__c` -> `Opportunity__r`)."""
        if self.type not in ("Lookup", "MasterDetail"):
            return None
        return f"{self.name[:-3]}__r" if self.name.endswith("__c") else self.name


@dataclass
class ObjectDef:
    """Custom fields (and, for custom objects and events, the object itself) of one sObject."""

    name: str
    label: str = ""
    custom: bool = False  # the object itself is defined by the package (`__c`, `__e`)
    event_type: str | None = None  # platform events: HighVolume / StandardVolume
    plural_label: str = ""
    name_field: FieldDef | None = None  # custom objects: the `nameField` (Text or AutoNumber)
    sharing_model: str | None = None
    fields: dict[str, FieldDef] = field(default_factory=dict)

    @property
    def is_platform_event(self) -> bool:
        return self.name.endswith("__e")


@dataclass(frozen=True)
class FieldPermission:
    """One `fieldPermissions` entry of a permission set (`field` is `Object.Field__c`)."""

    field: str
    readable: bool
    editable: bool


@dataclass(frozen=True)
class ObjectPermission:
    """One `objectPermissions` entry of a permission set."""

    object: str
    allow_read: bool = False
    allow_create: bool = False
    allow_edit: bool = False
    allow_delete: bool = False
    view_all_records: bool = False
    modify_all_records: bool = False


@dataclass
class PermissionSetDef:
    """A permission set of the package: what the integration user and the reps may read and write."""

    name: str
    label: str
    field_permissions: dict[str, FieldPermission] = field(default_factory=dict)
    object_permissions: dict[str, ObjectPermission] = field(default_factory=dict)
    user_permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NotificationTypeDef:
    """A `CustomNotificationType` of the package; `name` (the file's name) is its DeveloperName."""

    name: str
    label: str  # customNotifTypeName, what Setup and the CustomNotifTypeName field show
    master_label: str
    desktop: bool
    mobile: bool
    description: str = ""


@dataclass
class Schema:
    """Everything the package defines, by object API name."""

    objects: dict[str, ObjectDef] = field(default_factory=dict)
    # Change Data Capture selection (`PlatformEventChannelMember` on the ChangeEvents channel): entity names
    # such as `Opportunity`, in the order of the files.
    cdc_entities: tuple[str, ...] = ()
    permission_sets: dict[str, PermissionSetDef] = field(default_factory=dict)
    notification_types: dict[str, NotificationTypeDef] = field(default_factory=dict)

    def field(self, object_name: str, field_name: str) -> FieldDef | None:
        obj = self.objects.get(object_name)
        return obj.fields.get(field_name) if obj else None


def default_metadata_dir() -> Path:
    """Where the package is: `SFSIGN_METADATA_DIR`, else next to the source tree, else packaged copy."""
    env = os.environ.get("SFSIGN_METADATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "salesforce-metadata", here / "salesforce_metadata"):
        if (candidate / "sfdx-project.json").exists():
            return candidate
    raise MetadataError(
        "cannot find the salesforce-metadata/ SFDX package; set SFSIGN_METADATA_DIR to its folder"
    )


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(f"md:{tag}", NS)
    return child.text.strip() if child is not None and child.text is not None else None


def _bool(el: ET.Element, tag: str) -> bool:
    return (_text(el, tag) or "false").lower() == "true"


def _int(el: ET.Element, tag: str) -> int | None:
    value = _text(el, tag)
    return int(value) if value is not None else None


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MetadataError(f"{path}: not well-formed XML: {exc}") from exc


def _root(path: Path, tag: str) -> ET.Element:
    root = _parse(path)
    if root.tag != f"{{{NS['md']}}}{tag}":
        raise MetadataError(f"{path}: root element must be {tag} in the metadata namespace")
    return root


def parse_field(path: Path, object_name: str) -> FieldDef:
    root = _root(path, "CustomField")
    name = _text(root, "fullName")
    if name is None or f"{name}.field-meta.xml" != path.name:
        raise MetadataError(f"{path}: fullName {name!r} does not match the file name")
    return _field_from(root, path, object_name, name)


def _field_from(root: ET.Element, path: Path, object_name: str, name: str) -> FieldDef:
    ftype = _text(root, "type")
    if not ftype:
        raise MetadataError(f"{path}: fullName and type are required")
    values: list[str] = []
    restricted = False
    value_set = root.find("md:valueSet", NS)
    if value_set is not None:
        restricted = _bool(value_set, "restricted")
        for v in value_set.findall("md:valueSetDefinition/md:value", NS):
            full = _text(v, "fullName")
            if full:
                values.append(full)
    return FieldDef(
        object_name=object_name,
        name=name,
        label=_text(root, "label") or name,
        type=ftype,
        length=_int(root, "length"),
        precision=_int(root, "precision"),
        scale=_int(root, "scale"),
        required=_bool(root, "required"),
        unique=_bool(root, "unique"),
        external_id=_bool(root, "externalId"),
        picklist_values=tuple(values),
        restricted_picklist=restricted,
        reference_to=_text(root, "referenceTo"),
        relationship_name=_text(root, "relationshipName"),
        relationship_label=_text(root, "relationshipLabel"),
        delete_constraint=_text(root, "deleteConstraint"),
        visible_lines=_int(root, "visibleLines"),
        display_format=_text(root, "displayFormat"),
        case_sensitive=_bool(root, "caseSensitive"),
        description=_text(root, "description") or "",
    )


def _parse_object(path: Path, obj: ObjectDef) -> None:
    root = _root(path, "CustomObject")
    obj.custom = True
    obj.label = _text(root, "label") or obj.name
    obj.plural_label = _text(root, "pluralLabel") or obj.label
    obj.event_type = _text(root, "eventType")
    obj.sharing_model = _text(root, "sharingModel")
    name_field = root.find("md:nameField", NS)
    if name_field is not None:
        obj.name_field = _field_from(name_field, path, obj.name, "Name")


def parse_channel_member(path: Path) -> str:
    """A CDC selection file → the selected entity (`OpportunityChangeEvent` → `Opportunity`)."""
    root = _root(path, "PlatformEventChannelMember")
    channel, selected = _text(root, "eventChannel"), _text(root, "selectedEntity")
    if channel != "ChangeEvents" or not selected:
        raise MetadataError(f"{path}: only selections on the ChangeEvents channel are supported")
    if selected.endswith("__ChangeEvent"):
        return f"{selected[: -len('ChangeEvent')]}c"
    if not selected.endswith("ChangeEvent"):
        raise MetadataError(f"{path}: selectedEntity {selected!r} is not a change event")
    return selected[: -len("ChangeEvent")]


def parse_permission_set(path: Path) -> PermissionSetDef:
    root = _root(path, "PermissionSet")
    name = path.name.removesuffix(".permissionset-meta.xml")
    pset = PermissionSetDef(name=name, label=_text(root, "label") or name)
    for fp in root.findall("md:fieldPermissions", NS):
        fname = _text(fp, "field") or ""
        pset.field_permissions[fname] = FieldPermission(fname, _bool(fp, "readable"), _bool(fp, "editable"))
    for op in root.findall("md:objectPermissions", NS):
        oname = _text(op, "object") or ""
        pset.object_permissions[oname] = ObjectPermission(
            oname, allow_read=_bool(op, "allowRead"), allow_create=_bool(op, "allowCreate"),
            allow_edit=_bool(op, "allowEdit"), allow_delete=_bool(op, "allowDelete"),
            view_all_records=_bool(op, "viewAllRecords"), modify_all_records=_bool(op, "modifyAllRecords"),
        )
    pset.user_permissions = frozenset(
        _text(up, "name") or "" for up in root.findall("md:userPermissions", NS) if _bool(up, "enabled")
    )
    return pset


def parse_notification_type(path: Path) -> NotificationTypeDef:
    root = _root(path, "CustomNotificationType")
    name = path.name.removesuffix(".notiftype-meta.xml")
    label = _text(root, "customNotifTypeName")
    if not label:
        raise MetadataError(f"{path}: customNotifTypeName is required")
    return NotificationTypeDef(name=name, label=label, master_label=_text(root, "masterLabel") or label,
                               desktop=_bool(root, "desktop"), mobile=_bool(root, "mobile"),
                               description=_text(root, "description") or "")


def load_schema(metadata_dir: Path | None = None) -> Schema:
    """Load the objects, the CDC selection, the permission sets and the custom notification types under
    `force-app/main/default`."""
    base = metadata_dir or default_metadata_dir()
    default_dir = base / "force-app" / "main" / "default"
    objects_dir = default_dir / "objects"
    if not objects_dir.is_dir():
        raise MetadataError(f"{objects_dir}: no objects folder in the SFDX package")
    schema = Schema()
    for obj_dir in sorted(p for p in objects_dir.iterdir() if p.is_dir()):
        obj = ObjectDef(name=obj_dir.name)
        meta = obj_dir / f"{obj_dir.name}.object-meta.xml"
        if meta.exists():
            _parse_object(meta, obj)
        for fpath in sorted((obj_dir / "fields").glob("*.field-meta.xml")):
            fdef = parse_field(fpath, obj.name)
            obj.fields[fdef.name] = fdef
        schema.objects[obj.name] = obj
    members = sorted((default_dir / "platformEventChannelMembers").glob("*.platformEventChannelMember-meta.xml"))
    schema.cdc_entities = tuple(parse_channel_member(p) for p in members)
    for ppath in sorted((default_dir / "permissionsets").glob("*.permissionset-meta.xml")):
        pset = parse_permission_set(ppath)
        schema.permission_sets[pset.name] = pset
    for npath in sorted((default_dir / "notificationtypes").glob("*.notiftype-meta.xml")):
        ntype = parse_notification_type(npath)
        schema.notification_types[ntype.name] = ntype
    return schema
