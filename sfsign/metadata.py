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
    relationship_name: str | None = None
    description: str = ""


@dataclass
class ObjectDef:
    """Custom fields (and, for custom objects and events, the object itself) of one sObject."""

    name: str
    label: str = ""
    custom: bool = False  # the object itself is defined by the package (`__c`, `__e`)
    event_type: str | None = None  # platform events: HighVolume / StandardVolume
    fields: dict[str, FieldDef] = field(default_factory=dict)

    @property
    def is_platform_event(self) -> bool:
        return self.name.endswith("__e")


@dataclass
class Schema:
    """Everything the package defines, by object API name."""

    objects: dict[str, ObjectDef] = field(default_factory=dict)

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


def parse_field(path: Path, object_name: str) -> FieldDef:
    root = _parse(path)
    if root.tag != f"{{{NS['md']}}}CustomField":
        raise MetadataError(f"{path}: root element must be CustomField in the metadata namespace")
    name = _text(root, "fullName")
    ftype = _text(root, "type")
    if not name or not ftype:
        raise MetadataError(f"{path}: fullName and type are required")
    if f"{name}.field-meta.xml" != path.name:
        raise MetadataError(f"{path}: fullName {name!r} does not match the file name")
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
        description=_text(root, "description") or "",
    )


def load_schema(metadata_dir: Path | None = None) -> Schema:
    """Load every object folder under `force-app/main/default/objects`."""
    base = metadata_dir or default_metadata_dir()
    objects_dir = base / "force-app" / "main" / "default" / "objects"
    if not objects_dir.is_dir():
        raise MetadataError(f"{objects_dir}: no objects folder in the SFDX package")
    schema = Schema()
    for obj_dir in sorted(p for p in objects_dir.iterdir() if p.is_dir()):
        obj = ObjectDef(name=obj_dir.name)
        meta = obj_dir / f"{obj_dir.name}.object-meta.xml"
        if meta.exists():
            root = _parse(meta)
            obj.custom = True
            obj.label = _text(root, "label") or obj.name
            obj.event_type = _text(root, "eventType")
        for fpath in sorted((obj_dir / "fields").glob("*.field-meta.xml")):
            fdef = parse_field(fpath, obj.name)
            obj.fields[fdef.name] = fdef
        schema.objects[obj.name] = obj
    return schema
