"""The emulated org's data model: standard objects as Salesforce defines them plus the SFDX package.

Standard field definitions (types, lengths, createable/updateable, references, relationship and child
relationship names) are written here from Salesforce's object reference, because the daemon reads and
writes them with their real names and a mismatch must fail here as it would against a real org. The
package's custom fields come from `sfsign.metadata.load_schema()`, mapped from Metadata API types to the
types `describe` reports. This module also converts field values between the wire forms (REST JSON,
CometD JSON, snapshot JSON) and the Python values the store keeps.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sfsign import metadata as md
from sfsign.emulator.errors import ApiError
from sfsign.emulator.ids import KEY_PREFIXES, MASTER_RECORD_TYPE_ID

STRING_TYPES = frozenset(
    {"id", "string", "textarea", "picklist", "multipicklist", "reference", "url", "email", "phone",
     "combobox", "encryptedstring"}
)
NUMBER_TYPES = frozenset({"double", "currency", "percent", "int"})

SOAP_TYPES = {
    "id": "tns:ID", "reference": "tns:ID", "string": "xsd:string", "textarea": "xsd:string",
    "picklist": "xsd:string", "multipicklist": "xsd:string", "url": "xsd:string", "email": "xsd:string",
    "phone": "xsd:string", "combobox": "xsd:string", "encryptedstring": "xsd:string",
    "currency": "xsd:double", "double": "xsd:double", "percent": "xsd:double", "int": "xsd:int",
    "date": "xsd:date", "datetime": "xsd:dateTime", "time": "xsd:time", "boolean": "xsd:boolean",
    "base64": "xsd:base64Binary", "address": "urn:address",
}

# Currencies an admin may activate; the active ones are the CurrencyType records of the org.
ISO_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK", "DKK", "NOK", "PLN")


@dataclass(frozen=True)
class FieldSpec:
    """One field as `describe` reports it, plus what the store needs to validate and compute it."""

    name: str
    type: str
    label: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    digits: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    calculated: bool = False
    auto_number: bool = False
    defaulted_on_create: bool = False
    unique: bool = False
    case_sensitive: bool = False
    external_id: bool = False
    id_lookup: bool = False
    name_field: bool = False
    custom: bool = False
    picklist_values: tuple[str, ...] = ()
    restricted_picklist: bool = False
    default_value: Any = None
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    cascade_delete: bool = False
    compound_field_name: str | None = None  # e.g. BillingStreet -> BillingAddress
    compound_component: str | None = None  # name inside the compound value in change events: Street
    html_formatted: bool = False
    display_format: str | None = None  # custom auto-number fields: e.g. "SE-{00000000}"
    extra_type_info: str | None = None

    @property
    def required(self) -> bool:
        """Salesforce's 'required on create': not nillable, writeable, and without a default."""
        return (
            self.createable and not self.nillable and not self.defaulted_on_create and self.type != "boolean"
        )

    @property
    def permissionable(self) -> bool:
        """Whether field-level security applies: required, formula and system fields are always visible,
        and so are the currency code and a version's document id."""
        return (self.nillable and not self.calculated and self.createable
                and self.name not in ("CurrencyIsoCode", "ContentDocumentId", "RecordTypeId"))

    @property
    def filterable(self) -> bool:
        """Long text areas, blobs and compound fields cannot appear in WHERE."""
        return self.type not in ("base64", "address") and not (self.type == "textarea" and self.length > 255)

    @property
    def sortable(self) -> bool:
        return self.filterable and self.type != "multipicklist"

    def describe(self) -> dict[str, Any]:
        is_text = self.type in STRING_TYPES and self.type not in ("id", "reference")
        picklists = [
            {"active": True, "defaultValue": v == self.default_value, "label": v, "validFor": None, "value": v}
            for v in self.picklist_values
        ]
        return {
            "aggregatable": self.type not in ("textarea", "base64", "address", "boolean"),
            "aiPredictionField": False,
            "autoNumber": self.auto_number,
            "byteLength": self.length * 3 if (is_text or self.type in ("id", "reference")) else 0,
            "calculated": self.calculated,
            "calculatedFormula": None,
            "cascadeDelete": self.cascade_delete,
            "caseSensitive": self.case_sensitive,
            "compoundFieldName": self.compound_field_name,
            "controllerName": None,
            "createable": self.createable,
            "custom": self.custom,
            "defaultValue": self.default_value if self.type == "boolean" else None,
            "defaultValueFormula": None,
            "defaultedOnCreate": self.defaulted_on_create,
            "dependentPicklist": False,
            "deprecatedAndHidden": False,
            "digits": self.digits,
            "displayLocationInDecimal": False,
            "encrypted": False,
            "externalId": self.external_id,
            "extraTypeInfo": self.extra_type_info,
            "filterable": self.filterable,
            "filteredLookupInfo": None,
            "formulaTreatNullNumberAsZero": False,
            "groupable": self.type not in ("textarea", "base64", "address", "double", "currency", "percent",
                                           "datetime"),
            "highScaleNumber": False,
            "htmlFormatted": self.html_formatted,
            "idLookup": self.id_lookup,
            "inlineHelpText": None,
            "label": self.label,
            "length": self.length,
            "mask": None,
            "maskType": None,
            "name": self.name,
            "nameField": self.name_field,
            "namePointing": len(self.reference_to) > 1,
            "nillable": self.nillable,
            "permissionable": self.permissionable,
            "picklistValues": picklists,
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "precision": self.precision,
            "queryByDistance": False,
            "referenceTargetField": None,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "relationshipOrder": None,
            "restrictedDelete": False,
            "restrictedPicklist": self.restricted_picklist,
            "scale": self.scale,
            "searchPrefilterable": self.type == "reference",
            "soapType": SOAP_TYPES.get(self.type, "xsd:string"),
            "sortable": self.sortable,
            "type": self.type,
            "unique": self.unique,
            "updateable": self.updateable,
            "writeRequiresMasterRead": False,
        }


@dataclass(frozen=True)
class ChildRelationship:
    child_sobject: str
    field: str
    relationship_name: str | None
    cascade_delete: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "cascadeDelete": self.cascade_delete,
            "childSObject": self.child_sobject,
            "deprecatedAndHidden": False,
            "field": self.field,
            "junctionIdListNames": [],
            "junctionReferenceTo": [],
            "relationshipName": self.relationship_name,
            "restrictedDelete": False,
        }


@dataclass
class ObjectSpec:
    """One sObject type: its fields (in describe order) and capabilities."""

    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    custom: bool = False
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    queryable: bool = True
    searchable: bool = True
    triggerable: bool = True
    undeletable: bool = True
    is_event: bool = False
    child_relationships: list[ChildRelationship] = field(default_factory=list)
    _lower: dict[str, str] = field(default_factory=dict, repr=False)
    _rel_lower: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, *specs: FieldSpec) -> None:
        for spec in specs:
            self.fields[spec.name] = spec
            self._lower[spec.name.lower()] = spec.name
            if spec.relationship_name:
                self._rel_lower[spec.relationship_name.lower()] = spec.name

    def field(self, name: str) -> FieldSpec | None:
        """Case-insensitive field lookup (Salesforce names are case-insensitive)."""
        canonical = self._lower.get(name.lower())
        return self.fields[canonical] if canonical else None

    def relationship(self, name: str) -> FieldSpec | None:
        """The reference field behind a parent relationship name (`Account` -> AccountId)."""
        canonical = self._rel_lower.get(name.lower())
        return self.fields[canonical] if canonical else None

    def child_relationship(self, name: str) -> ChildRelationship | None:
        low = name.lower()
        for rel in self.child_relationships:
            if rel.relationship_name and rel.relationship_name.lower() == low:
                return rel
        return None

    @property
    def has_currency(self) -> bool:
        return "CurrencyIsoCode" in self.fields

    def urls(self, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}

    def global_entry(self, version: str) -> dict[str, Any]:
        return {
            "activateable": False,
            "associateEntityType": None,
            "associateParentEntity": None,
            "createable": self.createable,
            "custom": self.custom,
            "customSetting": False,
            "deepCloneable": False,
            "deletable": self.deletable,
            "deprecatedAndHidden": False,
            "feedEnabled": not self.is_event and self.name not in ("ContentDocumentLink", "CurrencyType"),
            "hasSubtypes": False,
            "isInterface": False,
            "isSubtype": False,
            "keyPrefix": self.key_prefix,
            "label": self.label,
            "labelPlural": self.label_plural,
            "layoutable": not self.is_event,
            "mergeable": self.name in ("Account", "Contact"),
            "mruEnabled": not self.is_event,
            "name": self.name,
            "queryable": self.queryable,
            "replicateable": not self.is_event,
            "retrieveable": not self.is_event,
            "searchable": self.searchable,
            "triggerable": self.triggerable,
            "undeletable": self.undeletable,
            "updateable": self.updateable,
            "urls": self.urls(version),
        }

    def describe(self, version: str, *, currency_codes: Iterable[str] | None = None,
                 record_types: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        """`record_types`: the object's RecordType records (Id, Name, DeveloperName, IsActive)."""
        out = self.global_entry(version)
        fields = []
        for spec in self.fields.values():
            if spec.name == "CurrencyIsoCode" and currency_codes is not None:
                spec = replace(spec, picklist_values=tuple(currency_codes))
            fields.append(spec.describe())
        urls = self.urls(version)
        urls.update({
            "compactLayouts": f"{urls['sobject']}/describe/compactLayouts",
            "approvalLayouts": f"{urls['sobject']}/describe/approvalLayouts",
            "defaultValues": f"{urls['sobject']}/defaultValues?recordTypeId&fields",
            "listviews": f"{urls['sobject']}/listviews",
            "layouts": f"{urls['sobject']}/describe/layouts",
            "quickActions": f"{urls['sobject']}/quickActions",
        })
        out.update({
            "actionOverrides": [],
            "childRelationships": [rel.describe() for rel in self.child_relationships],
            "compactLayoutable": not self.is_event,
            "defaultImplementation": None,
            "extendedBy": None,
            "extendsInterfaces": None,
            "fields": fields,
            "implementedBy": None,
            "implementsInterfaces": None,
            "listviewable": None,
            "lookupLayoutable": None,
            "namedLayoutInfos": [],
            "networkScopeFieldName": None,
            "recordTypeInfos": record_type_infos(self.name, version, record_types) if not self.is_event else [],
            "searchLayoutable": not self.is_event,
            "sobjectDescribeOption": "FULL",
            "supportedScopes": [{"label": "All " + self.label_plural.lower(), "name": "everything"}],
            "urls": urls,
        })
        return out


def record_type_infos(sobject: str, version: str, record_types: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """describe's `recordTypeInfos`: the object's record types, then Master, which every object has.

    Master is the default (and available) only while the object has no active record type of its own;
    an inactive record type is listed, neither available nor the default. Salesforce orders the list
    by label with Master last; the default is the user's profile's, here the first active one."""
    layout = f"/services/data/v{version}/sobjects/{sobject}/describe/layouts/"
    types = sorted(record_types, key=lambda r: str(r.get("Name") or ""))
    default = next((str(r["Id"]) for r in types if r.get("IsActive")), MASTER_RECORD_TYPE_ID)

    def info(rid: str, name: str, developer: str, active: bool, master: bool) -> dict[str, Any]:
        return {"active": active, "available": active, "defaultRecordTypeMapping": rid == default,
                "developerName": developer, "master": master, "name": name, "recordTypeId": rid,
                "urls": {"layout": layout + rid}}

    out = [info(str(r["Id"]), str(r.get("Name") or ""), str(r.get("DeveloperName") or ""), bool(r.get("IsActive")),
                False) for r in types]
    master = info(MASTER_RECORD_TYPE_ID, "Master", "Master", True, True)
    master["available"] = default == MASTER_RECORD_TYPE_ID
    return [*out, master]


def record_type_field() -> FieldSpec:
    """`RecordTypeId`: an object has it only once it has a record type besides Master (before that,
    naming it in SOQL is INVALID_FIELD, as in Salesforce)."""
    return _ref("RecordTypeId", "Record Type ID", ["RecordType"], "RecordType")


class OrgSchema:
    """Every sObject of the emulated org, looked up case-insensitively."""

    def __init__(self, objects: Iterable[ObjectSpec]) -> None:
        self.objects: dict[str, ObjectSpec] = {o.name: o for o in objects}
        self._lower = {name.lower(): name for name in self.objects}
        self._prefix = {o.key_prefix: o.name for o in self.objects.values()}

    def get(self, name: str) -> ObjectSpec | None:
        canonical = self._lower.get(name.lower())
        return self.objects[canonical] if canonical else None

    def by_prefix(self, prefix: str) -> ObjectSpec | None:
        name = self._prefix.get(prefix)
        return self.objects[name] if name else None

    def describe_global(self, version: str) -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": 200,
            "sobjects": [o.global_entry(version) for o in sorted(self.objects.values(), key=lambda o: o.name)],
        }


# --------------------------------------------------------------------------------------------------
# Field constructors (defaults follow Salesforce's describe for the type)


def _str(name: str, label: str, length: int, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="string", label=label, length=length, **kw)


def _textarea(name: str, label: str, length: int, **kw: Any) -> FieldSpec:
    kw.setdefault("extra_type_info", "plaintextarea")
    return FieldSpec(name=name, type="textarea", label=label, length=length, **kw)


def _picklist(name: str, label: str, values: Iterable[str], *, restricted: bool = False, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="picklist", label=label, length=kw.pop("length", 255),
                     picklist_values=tuple(values), restricted_picklist=restricted, **kw)


def _number(name: str, label: str, ftype: str, precision: int, scale: int, **kw: Any) -> FieldSpec:
    if ftype == "int":
        return FieldSpec(name=name, type="int", label=label, digits=precision, **kw)
    return FieldSpec(name=name, type=ftype, label=label, precision=precision, scale=scale, **kw)


def _bool(name: str, label: str, default: bool = False, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="boolean", label=label, nillable=False, defaulted_on_create=True,
                     default_value=default, **kw)


def _date(name: str, label: str, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="date", label=label, **kw)


def _datetime(name: str, label: str, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="datetime", label=label, **kw)


def _ref(name: str, label: str, to: Iterable[str], rel: str | None, **kw: Any) -> FieldSpec:
    return FieldSpec(name=name, type="reference", label=label, length=18, reference_to=tuple(to),
                     relationship_name=rel, **kw)


RO: dict[str, Any] = {"createable": False, "updateable": False}
CREATE_ONLY: dict[str, Any] = {"updateable": False}


def _id_field() -> FieldSpec:
    return FieldSpec(name="Id", type="id", label="Record ID", length=18, nillable=False, createable=False,
                     updateable=False, defaulted_on_create=True, id_lookup=True)


def _system_fields(*, created: bool = True) -> list[FieldSpec]:
    out = [_bool("IsDeleted", "Deleted", **RO)]
    if created:
        out += [
            _datetime("CreatedDate", "Created Date", nillable=False, defaulted_on_create=True, **RO),
            _ref("CreatedById", "Created By ID", ["User"], "CreatedBy", nillable=False, defaulted_on_create=True,
                 **RO),
            _datetime("LastModifiedDate", "Last Modified Date", nillable=False, defaulted_on_create=True, **RO),
            _ref("LastModifiedById", "Last Modified By ID", ["User"], "LastModifiedBy", nillable=False,
                 defaulted_on_create=True, **RO),
        ]
    out.append(_datetime("SystemModstamp", "System Modstamp", nillable=False, defaulted_on_create=True, **RO))
    return out


def _owner() -> FieldSpec:
    return _ref("OwnerId", "Owner ID", ["User"], "Owner", nillable=False, defaulted_on_create=True)


def _currency_iso(label: str, *, writeable: bool = True) -> FieldSpec:
    flags = {} if writeable else RO
    return _picklist("CurrencyIsoCode", label, ISO_CURRENCIES, restricted=True, length=3,
                     defaulted_on_create=True, **flags)


def _address(prefix: str, label: str) -> list[FieldSpec]:
    compound = f"{prefix}Address"
    parts = [
        _textarea(f"{prefix}Street", f"{label} Street", 255, compound_field_name=compound,
                  compound_component="Street"),
        _str(f"{prefix}City", f"{label} City", 40, compound_field_name=compound, compound_component="City"),
        _str(f"{prefix}State", f"{label} State/Province", 80, compound_field_name=compound,
             compound_component="State"),
        _str(f"{prefix}PostalCode", f"{label} Zip/Postal Code", 20, compound_field_name=compound,
             compound_component="PostalCode"),
        _str(f"{prefix}Country", f"{label} Country", 80, compound_field_name=compound,
             compound_component="Country"),
        _number(f"{prefix}Latitude", f"{label} Latitude", "double", 18, 15, compound_field_name=compound,
                compound_component="Latitude"),
        _number(f"{prefix}Longitude", f"{label} Longitude", "double", 18, 15, compound_field_name=compound,
                compound_component="Longitude"),
        _picklist(f"{prefix}GeocodeAccuracy", f"{label} Geocode Accuracy",
                  ["Address", "NearAddress", "Block", "Street", "ExtendedZip", "Zip", "Neighborhood", "City",
                   "County", "State", "Unknown"], restricted=True, length=40, compound_field_name=compound,
                  compound_component="GeocodeAccuracy"),
        FieldSpec(name=compound, type="address", label=f"{label} Address", **RO),
    ]
    return parts


OPPORTUNITY_STAGES: tuple[tuple[str, int, str], ...] = (
    # (stage, default probability, forecast category) as in a new org
    ("Prospecting", 10, "Pipeline"),
    ("Qualification", 10, "Pipeline"),
    ("Needs Analysis", 20, "Pipeline"),
    ("Value Proposition", 50, "Pipeline"),
    ("Id. Decision Makers", 60, "Pipeline"),
    ("Perception Analysis", 70, "Pipeline"),
    ("Proposal/Price Quote", 75, "Pipeline"),
    ("Negotiation/Review", 90, "Pipeline"),
    ("Closed Won", 100, "Closed"),
    ("Closed Lost", 0, "Omitted"),
)
CLOSED_STAGES = {"Closed Won": True, "Closed Lost": False}  # stage -> IsWon
QUOTE_STATUSES = ("Draft", "Needs Review", "In Review", "Approved", "Rejected", "Presented", "Accepted",
                  "Denied")
FILE_LINK_TARGETS = ("Account", "Contact", "Opportunity", "Quote", "Product2", "User")
INDUSTRIES = ("Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals", "Communications",
              "Construction", "Consulting", "Education", "Electronics", "Energy", "Engineering",
              "Entertainment", "Environmental", "Finance", "Food & Beverage", "Government", "Healthcare",
              "Hospitality", "Insurance", "Machinery", "Manufacturing", "Media", "Not For Profit",
              "Recreation", "Retail", "Shipping", "Technology", "Telecommunications", "Transportation",
              "Utilities", "Other")


def _line_item_fields(parent: str, parent_label: str) -> list[FieldSpec]:
    """Fields OpportunityLineItem and QuoteLineItem share."""
    return [
        _ref(f"{parent}Id", f"{parent_label} ID", [parent], parent, nillable=False, cascade_delete=True,
             **CREATE_ONLY),
        _number("SortOrder", "Sort Order", "int", 9, 0),
        _ref("PricebookEntryId", "Price Book Entry ID", ["PricebookEntry"], "PricebookEntry", **CREATE_ONLY),
        _ref("Product2Id", "Product ID", ["Product2"], "Product2", **CREATE_ONLY),
        _number("Quantity", "Quantity", "double", 12, 2, nillable=False),
        _number("TotalPrice", "Total Price", "currency", 16, 2),
        _number("UnitPrice", "Sales Price", "currency", 18, 2),
        _number("ListPrice", "List Price", "currency", 18, 2, **RO),
        _date("ServiceDate", "Date"),
        _str("Description", "Line Description", 255),
        _number("Discount", "Discount", "percent", 5, 2),
        _number("Subtotal", "Subtotal", "currency", 18, 2, calculated=True, **RO),
        _currency_iso(f"{parent_label} Product Currency", writeable=False),
    ]


def standard_objects() -> list[ObjectSpec]:
    """The standard sObjects the daemon touches, defined as Salesforce does (abridged field lists)."""
    objs: list[ObjectSpec] = []

    org = ObjectSpec("Organization", "Organization", "Organizations", KEY_PREFIXES["Organization"],
                     createable=False, updateable=True, deletable=False, undeletable=False, searchable=False)
    org.add(_id_field(), _str("Name", "Name", 80, nillable=False, name_field=True),
            _str("Division", "Division", 80),
            _textarea("Street", "Street", 255), _str("City", "City", 40), _str("State", "State/Province", 80),
            _str("PostalCode", "Zip/Postal Code", 20), _str("Country", "Country", 80),
            _str("Phone", "Phone", 40), _str("Fax", "Fax", 40),
            _picklist("DefaultLocaleSidKey", "Locale", ["de_DE", "en_US", "en_GB", "fr_FR"], restricted=True,
                      length=40, nillable=False),
            _picklist("LanguageLocaleKey", "Language", ["de", "en_US", "fr"], restricted=True, length=40,
                      nillable=False),
            _picklist("TimeZoneSidKey", "Default Time Zone", ["Europe/Berlin", "Europe/Paris", "Europe/London",
                                                              "America/New_York", "GMT"],
                      restricted=True, length=40, nillable=False),
            _str("OrganizationType", "Edition", 40, **RO), _bool("IsSandbox", "Is Sandbox", **RO),
            _str("InstanceName", "Instance Name", 5, **RO),
            _bool("UsesStartDateAsFiscalYearName", "Fiscal Year Name by Start", **RO),
            *_system_fields())
    objs.append(org)

    user = ObjectSpec("User", "User", "Users", KEY_PREFIXES["User"], deletable=False, undeletable=False)
    user.add(_id_field(),
             _str("Username", "Username", 80, nillable=False, unique=True, id_lookup=True),
             _str("LastName", "Last Name", 80, nillable=False),
             _str("FirstName", "First Name", 40),
             _str("Name", "Full Name", 121, name_field=True, **RO),
             _str("CompanyName", "Company Name", 80), _str("Division", "Division", 80),
             _str("Department", "Department", 80), _str("Title", "Title", 80),
             FieldSpec(name="Email", type="email", label="Email", length=128, nillable=False),
             FieldSpec(name="Phone", type="phone", label="Phone", length=40),
             FieldSpec(name="MobilePhone", type="phone", label="Mobile", length=40),
             _str("Alias", "Alias", 8, nillable=False),
             _bool("IsActive", "Active", default=True),
             _picklist("TimeZoneSidKey", "Time Zone", ["Europe/Berlin", "Europe/Paris", "Europe/London",
                                                       "America/New_York", "America/Los_Angeles", "GMT"],
                       restricted=True, length=40, nillable=False),
             _picklist("LocaleSidKey", "Locale", ["de_DE", "en_US", "en_GB", "fr_FR"], restricted=True, length=40,
                       nillable=False),
             _picklist("EmailEncodingKey", "Email Encoding", ["UTF-8", "ISO-8859-1"], restricted=True,
                       length=40, nillable=False),
             _picklist("LanguageLocaleKey", "Language", ["de", "en_US", "fr"], restricted=True, length=40,
                       nillable=False),
             _picklist("UserType", "User Type", ["Standard", "AutomatedProcess"], restricted=True, length=40,
                       **RO),
             _currency_iso("Currency"),
             _picklist("DefaultCurrencyIsoCode", "User Currency", ISO_CURRENCIES, restricted=True, length=3,
                       defaulted_on_create=True),
             *[s for s in _system_fields() if s.name != "IsDeleted"])
    objs.append(user)

    currency = ObjectSpec("CurrencyType", "Currency", "Currencies", KEY_PREFIXES["CurrencyType"],
                          undeletable=False, searchable=False)
    currency.add(_id_field(),
                 _picklist("IsoCode", "Currency ISO Code", ISO_CURRENCIES, restricted=True, length=3,
                           nillable=False, **CREATE_ONLY),
                 _number("ConversionRate", "Conversion Rate", "double", 18, 6, nillable=False),
                 _number("DecimalPlaces", "Decimal Places", "int", 9, 0, defaulted_on_create=True,
                         nillable=False),
                 _bool("IsActive", "Active"), _bool("IsCorporate", "Corporate", **RO),
                 *[s for s in _system_fields() if s.name != "IsDeleted"])
    objs.append(currency)

    record_type = ObjectSpec("RecordType", "Record Type", "Record Types", KEY_PREFIXES["RecordType"],
                             createable=False, updateable=False, deletable=False, undeletable=False,
                             searchable=False, triggerable=False)
    record_type.add(_id_field(), _str("Name", "Record Type Name", 80, nillable=False, name_field=True),
                    _str("DeveloperName", "Record Type Name", 80, nillable=False),
                    _str("NamespacePrefix", "Namespace Prefix", 15, **RO),
                    _str("Description", "Description", 255),
                    _picklist("SobjectType", "SObject Type Name", ["Account", "Contact", "Opportunity", "Quote",
                                                                   "Product2"], restricted=True, length=40,
                              nillable=False),
                    _bool("IsActive", "Active"),
                    *[s for s in _system_fields() if s.name != "IsDeleted"])
    objs.append(record_type)

    account = ObjectSpec("Account", "Account", "Accounts", KEY_PREFIXES["Account"])
    account.add(_id_field(), _bool("IsDeleted", "Deleted", **RO),
                _str("Name", "Account Name", 255, nillable=False, name_field=True),
                _picklist("Type", "Account Type", ["Prospect", "Customer - Direct", "Customer - Channel",
                                                   "Channel Partner / Reseller", "Installation Partner",
                                                   "Technology Partner", "Other"], length=255),
                _ref("ParentId", "Parent Account ID", ["Account"], "Parent"),
                *_address("Billing", "Billing"), *_address("Shipping", "Shipping"),
                FieldSpec(name="Phone", type="phone", label="Account Phone", length=40),
                FieldSpec(name="Fax", type="phone", label="Account Fax", length=40),
                _str("AccountNumber", "Account Number", 40),
                FieldSpec(name="Website", type="url", label="Website", length=255),
                _picklist("Industry", "Industry", INDUSTRIES),
                _number("AnnualRevenue", "Annual Revenue", "currency", 18, 0),
                _number("NumberOfEmployees", "Employees", "int", 8, 0),
                _textarea("Description", "Account Description", 32000, extra_type_info=None),
                _owner(), _currency_iso("Account Currency"),
                *[s for s in _system_fields() if s.name != "IsDeleted"])
    objs.append(account)

    contact = ObjectSpec("Contact", "Contact", "Contacts", KEY_PREFIXES["Contact"])
    contact.add(_id_field(), _bool("IsDeleted", "Deleted", **RO),
                _ref("AccountId", "Account ID", ["Account"], "Account"),
                _str("LastName", "Last Name", 80, nillable=False, compound_field_name="Name",
                     compound_component="LastName"),
                _str("FirstName", "First Name", 40, compound_field_name="Name", compound_component="FirstName"),
                _picklist("Salutation", "Salutation", ["Mr.", "Ms.", "Mrs.", "Dr.", "Prof."], length=40,
                          compound_field_name="Name", compound_component="Salutation"),
                _str("Name", "Full Name", 121, name_field=True, **RO),
                *_address("Mailing", "Mailing"),
                FieldSpec(name="Phone", type="phone", label="Business Phone", length=40),
                FieldSpec(name="MobilePhone", type="phone", label="Mobile Phone", length=40),
                FieldSpec(name="Email", type="email", label="Email", length=80, id_lookup=True),
                _str("Title", "Title", 128), _str("Department", "Department", 80),
                _textarea("Description", "Contact Description", 32000, extra_type_info=None),
                _owner(), _currency_iso("Contact Currency"),
                *[s for s in _system_fields() if s.name != "IsDeleted"])
    objs.append(contact)

    product = ObjectSpec("Product2", "Product", "Products", KEY_PREFIXES["Product2"])
    product.add(_id_field(), _str("Name", "Product Name", 255, nillable=False, name_field=True),
                _str("ProductCode", "Product Code", 255),
                _textarea("Description", "Product Description", 4000),
                _bool("IsActive", "Active"),
                _picklist("Family", "Product Family", ["Software", "Services", "Support", "Hardware"]),
                _str("StockKeepingUnit", "Product SKU", 180),
                _picklist("QuantityUnitOfMeasure", "Quantity Unit Of Measure", ["Each", "Hour", "Day", "Month",
                                                                               "Year", "User"]),
                _currency_iso("Product Currency"), *_system_fields())
    objs.append(product)

    pricebook = ObjectSpec("Pricebook2", "Price Book", "Price Books", KEY_PREFIXES["Pricebook2"])
    pricebook.add(_id_field(), _str("Name", "Price Book Name", 255, nillable=False, name_field=True),
                  _bool("IsActive", "Active"), _bool("IsArchived", "Is Archived", **RO),
                  _str("Description", "Description", 255), _bool("IsStandard", "Is Standard Price Book", **RO),
                  *_system_fields())
    objs.append(pricebook)

    pbe = ObjectSpec("PricebookEntry", "Price Book Entry", "Price Book Entries", KEY_PREFIXES["PricebookEntry"])
    pbe.add(_id_field(), _str("Name", "Product Name", 255, **RO),
            _ref("Pricebook2Id", "Price Book ID", ["Pricebook2"], "Pricebook2", nillable=False, cascade_delete=True,
                 **CREATE_ONLY),
            _ref("Product2Id", "Product ID", ["Product2"], "Product2", nillable=False, cascade_delete=True,
                 **CREATE_ONLY),
            _number("UnitPrice", "List Price", "currency", 18, 2, nillable=False),
            _bool("IsActive", "Active"), _bool("UseStandardPrice", "Use Standard Price"),
            _str("ProductCode", "Product Code", 255, **RO),
            _bool("IsArchived", "Is Archived", **RO),
            replace(_currency_iso("Price Book Entry Currency"), updateable=False),
            *_system_fields())
    objs.append(pbe)

    opp = ObjectSpec("Opportunity", "Opportunity", "Opportunities", KEY_PREFIXES["Opportunity"])
    opp.add(_id_field(), _bool("IsDeleted", "Deleted", **RO),
            _ref("AccountId", "Account ID", ["Account"], "Account"),
            _bool("IsPrivate", "Private"),
            _str("Name", "Name", 120, nillable=False, name_field=True),
            _textarea("Description", "Description", 32000, extra_type_info=None),
            _picklist("StageName", "Stage", [s for s, _, _ in OPPORTUNITY_STAGES], restricted=True,
                      nillable=False),
            _number("Amount", "Amount", "currency", 18, 2),
            _number("Probability", "Probability (%)", "percent", 3, 0),
            _number("ExpectedRevenue", "Expected Amount", "currency", 18, 2, **RO),
            _number("TotalOpportunityQuantity", "Quantity", "double", 18, 2),
            _date("CloseDate", "Close Date", nillable=False),
            _picklist("Type", "Opportunity Type", ["Existing Customer - Upgrade",
                                                   "Existing Customer - Replacement",
                                                   "Existing Customer - Downgrade", "New Customer"]),
            _str("NextStep", "Next Step", 255),
            _picklist("LeadSource", "Lead Source", ["Web", "Phone Inquiry", "Partner Referral",
                                                    "Purchased List", "Other"]),
            _bool("IsClosed", "Closed", **RO), _bool("IsWon", "Won", **RO),
            _picklist("ForecastCategory", "Forecast Category", ["Omitted", "Pipeline", "BestCase", "Forecast",
                                                                "Closed"], restricted=True, length=40, **RO),
            _picklist("ForecastCategoryName", "Forecast Category", ["Omitted", "Pipeline", "Best Case",
                                                                    "Commit", "Closed"], restricted=True),
            _currency_iso("Opportunity Currency"),
            _ref("ContactId", "Contact ID", ["Contact"], "Contact"),
            _ref("Pricebook2Id", "Price Book ID", ["Pricebook2"], "Pricebook2"),
            _ref("SyncedQuoteId", "Quote ID", ["Quote"], "SyncedQuote"),
            _bool("HasOpportunityLineItem", "Has Line Item", **RO),
            _owner(),
            *[s for s in _system_fields() if s.name != "IsDeleted"],
            _date("LastActivityDate", "Last Activity", **RO),
            _number("FiscalQuarter", "Fiscal Quarter", "int", 11, 0, **RO),
            _number("FiscalYear", "Fiscal Year", "int", 11, 0, **RO),
            _str("Fiscal", "Fiscal Period", 6, **RO))
    objs.append(opp)

    oli = ObjectSpec("OpportunityLineItem", "Opportunity Product", "Opportunity Product",
                     KEY_PREFIXES["OpportunityLineItem"], undeletable=False, searchable=False)
    oli.add(_id_field(), *_line_item_fields("Opportunity", "Opportunity")[:1],
            _str("Name", "Opportunity Product Name", 376, name_field=True, **RO),
            _str("ProductCode", "Product Code", 255, **RO),
            *_line_item_fields("Opportunity", "Opportunity")[1:],
            *_system_fields())
    objs.append(oli)

    ocr = ObjectSpec("OpportunityContactRole", "Opportunity Contact Role", "Opportunity Contact Role",
                     KEY_PREFIXES["OpportunityContactRole"], undeletable=False, searchable=False)
    ocr.add(_id_field(),
            _ref("OpportunityId", "Opportunity ID", ["Opportunity"], "Opportunity", nillable=False,
                 cascade_delete=True, **CREATE_ONLY),
            _ref("ContactId", "Contact ID", ["Contact"], "Contact", nillable=False, cascade_delete=True),
            _picklist("Role", "Role", ["Business User", "Decision Maker", "Economic Buyer",
                                       "Economic Decision Maker", "Evaluator", "Executive Sponsor", "Influencer",
                                       "Technical Buyer", "Other"]),
            _bool("IsPrimary", "Primary"),
            *_system_fields())
    objs.append(ocr)

    quote = ObjectSpec("Quote", "Quote", "Quotes", KEY_PREFIXES["Quote"])
    quote.add(_id_field(), _owner(), _bool("IsDeleted", "Deleted", **RO),
              _str("Name", "Quote Name", 255, nillable=False, name_field=True),
              _currency_iso("Quote Currency", writeable=False),
              *[s for s in _system_fields() if s.name != "IsDeleted"],
              _ref("OpportunityId", "Opportunity ID", ["Opportunity"], "Opportunity", nillable=False,
                   cascade_delete=True, **CREATE_ONLY),
              _ref("Pricebook2Id", "Price Book ID", ["Pricebook2"], "Pricebook2"),
              _ref("ContactId", "Contact ID", ["Contact"], "Contact"),
              _str("QuoteNumber", "Quote Number", 30, auto_number=True, defaulted_on_create=True, nillable=False,
                   **RO),
              _bool("IsSyncing", "Syncing", **RO),
              _number("ShippingHandling", "Shipping and Handling", "currency", 18, 2),
              _number("Tax", "Tax", "currency", 18, 2),
              _picklist("Status", "Status", QUOTE_STATUSES, defaulted_on_create=True, default_value="Draft"),
              _date("ExpirationDate", "Expiration Date"),
              _textarea("Description", "Description", 32000, extra_type_info=None),
              _number("Subtotal", "Subtotal", "currency", 18, 2, calculated=True, **RO),
              _number("TotalPrice", "Total Price", "currency", 18, 2, calculated=True, **RO),
              _number("LineItemCount", "Line Items", "int", 8, 0, **RO),
              _str("BillingName", "Bill To Name", 255), _str("ShippingName", "Ship To Name", 255),
              FieldSpec(name="Email", type="email", label="Email", length=80),
              FieldSpec(name="Phone", type="phone", label="Phone", length=40),
              FieldSpec(name="Fax", type="phone", label="Fax", length=40),
              *_address("Billing", "Bill To"), *_address("Shipping", "Ship To"),
              _number("Discount", "Discount", "percent", 5, 2, calculated=True, **RO),
              _number("GrandTotal", "Grand Total", "currency", 18, 2, calculated=True, **RO),
              _ref("AccountId", "Account ID", ["Account"], "Account", **RO))
    objs.append(quote)

    qli = ObjectSpec("QuoteLineItem", "Quote Line Item", "Quote Line Items", KEY_PREFIXES["QuoteLineItem"],
                     undeletable=False, searchable=False)
    qli_fields = _line_item_fields("Quote", "Quote")
    qli_fields = [replace(f, nillable=False) if f.name == "UnitPrice" else f for f in qli_fields]
    qli.add(_id_field(), _bool("IsDeleted", "Deleted", **RO),
            _str("LineNumber", "Line Item Number", 255, auto_number=True, defaulted_on_create=True,
                 nillable=False, name_field=True, **RO),
            *[s for s in _system_fields() if s.name != "IsDeleted"],
            *qli_fields,
            _ref("OpportunityLineItemId", "Opportunity Line Item ID", [], None, **RO))
    objs.append(qli)

    cd = ObjectSpec("ContentDocument", "Content Document", "Content Documents", KEY_PREFIXES["ContentDocument"],
                    createable=False)
    cd.add(_id_field(), *_system_fields(), _bool("IsArchived", "Is Archived", **RO),
           _ref("ArchivedById", "User ID", ["User"], "ArchivedBy", **RO), _date("ArchivedDate", "Archived Date", **RO),
           _ref("OwnerId", "Owner ID", ["User"], "Owner", nillable=False, createable=False),
           _str("Title", "Title", 255, nillable=False, name_field=True, createable=False),
           _picklist("PublishStatus", "Publish Status", ["U", "P", "R"], restricted=True, **RO),
           _ref("LatestPublishedVersionId", "Latest Published Version ID", ["ContentVersion"],
                "LatestPublishedVersion", **RO),
           _ref("ParentId", "Parent ID", ["ContentWorkspace"], None, **RO),
           _datetime("LastViewedDate", "Last Viewed Date", **RO),
           _textarea("Description", "Description", 1000, createable=False),
           _number("ContentSize", "Size", "int", 10, 0, **RO),
           _str("FileType", "File Type", 20, **RO), _str("FileExtension", "File Extension", 40, **RO),
           _picklist("SharingOption", "Prevent others from sharing and unsharing", ["A", "R"], restricted=True,
                     createable=False),
           _picklist("SharingPrivacy", "File Privacy on Records", ["N", "P"], restricted=True, createable=False),
           _datetime("ContentModifiedDate", "Content Modified Date", **RO),
           _str("ContentAssetId", "Asset File ID", 18, **RO))
    objs.append(cd)

    cv = ObjectSpec("ContentVersion", "Content Version", "Content Versions", KEY_PREFIXES["ContentVersion"],
                    deletable=False, undeletable=False)
    cv.add(_id_field(),
           _ref("ContentDocumentId", "Content Document ID", ["ContentDocument"], "ContentDocument",
                **CREATE_ONLY),
           _bool("IsLatest", "Is Latest", **RO),
           FieldSpec(name="ContentUrl", type="url", label="Content URL", length=1300),
           _ref("ContentBodyId", "Content Body ID", [], None, **RO),
           _str("VersionNumber", "Version Number", 20, **RO),
           _str("Title", "Title", 255, nillable=False, name_field=True, defaulted_on_create=True),
           _textarea("Description", "Description", 1000),
           _str("ReasonForChange", "Reason for Change", 1000),
           _picklist("SharingOption", "Prevent others from sharing and unsharing", ["A", "R"], restricted=True,
                     defaulted_on_create=True),
           _picklist("SharingPrivacy", "File Privacy on Records", ["N", "P"], restricted=True,
                     defaulted_on_create=True),
           _str("PathOnClient", "Path On Client", 500, **CREATE_ONLY),
           _number("RatingCount", "Rating Count", "int", 9, 0, **RO),
           _bool("IsDeleted", "Deleted", **RO),
           _datetime("ContentModifiedDate", "Content Modified Date", **CREATE_ONLY),
           _ref("ContentModifiedById", "User ID", ["User"], "ContentModifiedBy", **RO),
           *[s for s in _system_fields() if s.name != "IsDeleted"],
           _number("ContentSize", "Size", "int", 10, 0, **RO),
           _str("FileType", "File Type", 20, **RO), _str("FileExtension", "File Extension", 40, **RO),
           _ref("FirstPublishLocationId", "ID of the location where the version was first published",
                FILE_LINK_TARGETS, None, **CREATE_ONLY),
           _picklist("Origin", "Content Origin", ["C", "H"], restricted=True, defaulted_on_create=True,
                     **CREATE_ONLY),
           _picklist("ContentLocation", "Content Location", ["S", "E", "L"], restricted=True,
                     defaulted_on_create=True, **CREATE_ONLY),
           _textarea("TextPreview", "Text Preview", 255, **RO),
           _str("ExternalDocumentInfo1", "External Document Info1", 1000),
           _str("ExternalDocumentInfo2", "External Document Info2", 1000),
           _ref("OwnerId", "Owner ID", ["User"], "Owner", nillable=False, defaulted_on_create=True),
           _picklist("PublishStatus", "Publish Status", ["U", "P", "R"], restricted=True, **RO),
           _str("Checksum", "Checksum", 50, **RO),
           FieldSpec(name="VersionData", type="base64", label="Version Data", length=0, **CREATE_ONLY),
           FieldSpec(name="VersionDataUrl", type="url", label="Version Data URL", length=255, **RO))
    objs.append(cv)

    cdl = ObjectSpec("ContentDocumentLink", "Content Document Link", "Content Document Link",
                     KEY_PREFIXES["ContentDocumentLink"], undeletable=False, searchable=False)
    cdl.add(_id_field(),
            _ref("LinkedEntityId", "Linked Entity ID", FILE_LINK_TARGETS, "LinkedEntity", nillable=False,
                 **CREATE_ONLY),
            _ref("ContentDocumentId", "ContentDocument ID", ["ContentDocument"], "ContentDocument",
                 nillable=False, cascade_delete=True, **CREATE_ONLY),
            _bool("IsDeleted", "Deleted", **RO),
            _datetime("SystemModstamp", "System Modstamp", nillable=False, defaulted_on_create=True, **RO),
            _picklist("ShareType", "Share Type", ["V", "C", "I"], restricted=True, length=40,
                      defaulted_on_create=True, nillable=False),
            _picklist("Visibility", "Visibility", ["AllUsers", "InternalUsers", "SharedUsers"], restricted=True,
                      length=40, defaulted_on_create=True))
    objs.append(cdl)
    objs.append(custom_notification_type())
    return objs


def custom_notification_type() -> ObjectSpec:
    """`CustomNotificationType` (object reference, API 47.0+; fields as the field reference lists them):
    how a client finds a type's 0ML id by DeveloperName. Its records are the package's notification
    types (`sfsign.emulator.notifications.deploy_notification_types`); an admin creates them in Setup or by
    deploying, never through the data API here."""
    spec = ObjectSpec("CustomNotificationType", "Custom Notification Type", "Custom Notification Types",
                      KEY_PREFIXES["CustomNotificationType"], createable=False, updateable=False, deletable=False,
                      undeletable=False, searchable=False, triggerable=False)
    spec.add(_id_field(),
             _str("CustomNotifTypeName", "Name", 80, nillable=False, unique=True, id_lookup=True),
             _textarea("Description", "Description", 255),
             _bool("Desktop", "Desktop"),
             _str("DeveloperName", "Name", 80, nillable=False),
             _bool("IsSlack", "Slack", **RO),
             _picklist("Language", "Master Language", ["en_US", "de", "fr"], restricted=True, length=40,
                       defaulted_on_create=True),
             _str("MasterLabel", "Label", 80, nillable=False, name_field=True),
             _bool("Mobile", "Mobile"),
             _str("NamespacePrefix", "Namespace Prefix", 15, **RO),
             *_system_fields())
    return spec


# (child, field) -> child relationship name on the parent; cascade-delete children are marked in FieldSpec.
CHILD_RELATIONSHIPS: tuple[tuple[str, str, str | None], ...] = (
    ("Account", "ParentId", "ChildAccounts"),
    ("Contact", "AccountId", "Contacts"),
    ("Opportunity", "AccountId", "Opportunities"),
    ("Quote", "AccountId", "Quotes"),
    ("Opportunity", "ContactId", "Opportunities"),
    ("OpportunityContactRole", "ContactId", "OpportunityContactRoles"),
    ("Quote", "ContactId", "Quotes"),
    ("OpportunityLineItem", "OpportunityId", "OpportunityLineItems"),
    ("OpportunityContactRole", "OpportunityId", "OpportunityContactRoles"),
    ("Quote", "OpportunityId", "Quotes"),
    ("QuoteLineItem", "QuoteId", "QuoteLineItems"),
    ("Opportunity", "Pricebook2Id", "Opportunities"),
    ("PricebookEntry", "Pricebook2Id", "PricebookEntries"),
    ("Quote", "Pricebook2Id", "Quotes"),
    ("PricebookEntry", "Product2Id", "PricebookEntries"),
    ("OpportunityLineItem", "Product2Id", None),
    ("QuoteLineItem", "Product2Id", None),
    ("OpportunityLineItem", "PricebookEntryId", "OpportunityLineItems"),
    ("QuoteLineItem", "PricebookEntryId", "QuoteLineItems"),
    ("ContentDocumentLink", "ContentDocumentId", "ContentDocumentLinks"),
    ("ContentVersion", "ContentDocumentId", "ContentVersions"),
    ("ContentDocumentLink", "LinkedEntityId", "ContentDocumentLinks"),
    ("ContentVersion", "FirstPublishLocationId", None),
    ("Opportunity", "SyncedQuoteId", None),
)


# --------------------------------------------------------------------------------------------------
# Custom fields from the SFDX package

_MD_TYPES = {
    "Text": "string", "TextArea": "textarea", "LongTextArea": "textarea", "Html": "textarea",
    "Picklist": "picklist", "MultiselectPicklist": "multipicklist", "Url": "url", "Email": "email",
    "Phone": "phone", "Number": "double", "Currency": "currency", "Percent": "percent", "Checkbox": "boolean",
    "Date": "date", "DateTime": "datetime", "Time": "time", "Lookup": "reference", "MasterDetail": "reference",
    "AutoNumber": "string", "EncryptedText": "encryptedstring", "Summary": "double",
}


def custom_field_spec(fdef: md.FieldDef, *, event: bool = False) -> FieldSpec:
    """Map a Metadata API CustomField to what `describe` reports for it."""
    ftype = _MD_TYPES.get(fdef.type)
    if ftype is None:
        raise md.MetadataError(f"{fdef.object_name}.{fdef.name}: unsupported field type {fdef.type}")
    kw: dict[str, Any] = {
        "custom": True,
        "unique": fdef.unique,
        "external_id": fdef.external_id,
        "id_lookup": fdef.external_id or fdef.unique,
        "nillable": not fdef.required and ftype != "boolean",
    }
    if event:
        kw["updateable"] = False
    if ftype in ("string", "encryptedstring"):
        kw["length"] = fdef.length or 255
        kw["case_sensitive"] = fdef.case_sensitive and fdef.unique
    elif ftype == "textarea":
        kw["length"] = fdef.length or (255 if fdef.type == "TextArea" else 32768)
        kw["extra_type_info"] = {"Html": "richtextarea", "TextArea": "plaintextarea"}.get(fdef.type)
        kw["html_formatted"] = fdef.type == "Html"
    elif ftype in ("url",):
        kw["length"] = 255
    elif ftype == "email":
        kw["length"] = 80
    elif ftype == "phone":
        kw["length"] = 40
    elif ftype in ("picklist", "multipicklist"):
        kw["length"] = 255 if ftype == "picklist" else 4099
        kw["picklist_values"] = fdef.picklist_values
        kw["restricted_picklist"] = fdef.restricted_picklist
    elif ftype in ("double", "currency", "percent"):
        kw["precision"] = fdef.precision or 18
        kw["scale"] = fdef.scale or 0
    elif ftype == "boolean":
        kw["defaulted_on_create"] = True
        kw["default_value"] = False
    elif ftype == "reference":
        # `relationshipName` in the package names the parent's child relationship (`Signature_Events` →
        # `Signature_Events__r`); the field's own relationship is its name with `__r` (`Opportunity__r`).
        kw["length"] = 18
        kw["reference_to"] = (fdef.reference_to,) if fdef.reference_to else ()
        kw["relationship_name"] = fdef.parent_relationship_name
        kw["cascade_delete"] = fdef.type == "MasterDetail"
    if fdef.type == "AutoNumber":
        kw.update(auto_number=True, createable=False, updateable=False, defaulted_on_create=True, length=30,
                  display_format=fdef.display_format or "{0}")
    if fdef.type == "Summary":
        kw.update(calculated=True, createable=False, updateable=False)
    return FieldSpec(name=fdef.name, type=ftype, label=fdef.label, **kw)


def _event_object(obj: md.ObjectDef, prefix: str) -> ObjectSpec:
    spec = ObjectSpec(obj.name, obj.label or obj.name, obj.label or obj.name, prefix, custom=True,
                      updateable=False, deletable=False, queryable=False, searchable=False, triggerable=True,
                      undeletable=False, is_event=True)
    spec.add(_str("ReplayId", "Replay ID", 255, **RO),
             _datetime("CreatedDate", "Created Date", nillable=False, defaulted_on_create=True, **RO),
             _ref("CreatedById", "Created By ID", ["User"], "CreatedBy", nillable=False, defaulted_on_create=True,
                  **RO),
             _str("EventUuid", "Event UUID", 36, **RO))
    return spec


def _custom_object(obj: md.ObjectDef, prefix: str) -> ObjectSpec:
    label = obj.label or obj.name
    spec = ObjectSpec(obj.name, label, obj.plural_label or label, prefix, custom=True)
    name_def = obj.name_field
    if name_def is not None and name_def.type == "AutoNumber":
        name = _str("Name", name_def.label, 30, nillable=False, name_field=True, auto_number=True,
                    defaulted_on_create=True, display_format=name_def.display_format or "{0}", **RO)
    else:
        name = _str("Name", name_def.label if name_def else f"{label} Name", 80, nillable=False, name_field=True)
    spec.add(_id_field(), _owner(), _bool("IsDeleted", "Deleted", **RO), name,
             _currency_iso("Currency"), *[s for s in _system_fields() if s.name != "IsDeleted"])
    return spec


def build_org_schema(meta: md.Schema | None = None) -> OrgSchema:
    """Standard objects merged with the package's custom objects, events and fields."""
    meta = meta if meta is not None else md.load_schema()
    objects = {o.name: o for o in standard_objects()}
    custom_prefixes = iter(f"a{n:02d}" for n in range(100))
    event_prefixes = iter(f"e{n:02d}" for n in range(100))
    for obj in meta.objects.values():
        target = objects.get(obj.name)
        if target is None:
            if obj.is_platform_event:
                target = _event_object(obj, next(event_prefixes))
            elif obj.name.endswith("__c"):
                target = _custom_object(obj, next(custom_prefixes))
            else:
                raise md.MetadataError(f"{obj.name}: the emulator has no standard object of that name")
            objects[obj.name] = target
        for fdef in obj.fields.values():
            if target.field(fdef.name) is not None:
                raise md.MetadataError(f"{obj.name}.{fdef.name}: field already defined")
            target.add(custom_field_spec(fdef, event=target.is_event))
    for child_name, fname, rel in CHILD_RELATIONSHIPS:
        child = objects[child_name]
        fspec = child.fields[fname]
        for parent_name in fspec.reference_to:
            if parent_name in objects:
                objects[parent_name].child_relationships.append(
                    ChildRelationship(child_name, fname, rel, cascade_delete=fspec.cascade_delete))
    for obj_spec in list(objects.values()):
        if not obj_spec.custom:
            continue
        package_obj = meta.objects.get(obj_spec.name)
        for fspec in obj_spec.fields.values():
            pkg_field = package_obj.fields.get(fspec.name) if package_obj else None
            if fspec.custom and fspec.type == "reference" and pkg_field is not None:
                child_rel = f"{pkg_field.relationship_name}__r" if pkg_field.relationship_name else None
                for parent_name in fspec.reference_to:
                    if parent_name in objects:
                        objects[parent_name].child_relationships.append(
                            ChildRelationship(obj_spec.name, fspec.name, child_rel, fspec.cascade_delete))
    return OrgSchema(objects.values())


# --------------------------------------------------------------------------------------------------
# Value conversion

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$"
)
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")

_JAVA_TYPE = {"double": "double", "currency": "double", "percent": "double", "int": "int", "date": "date",
              "datetime": "datetime", "boolean": "boolean", "base64": "base64", "time": "time"}


def _token_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    return "VALUE_STRING"


def parser_error(spec: FieldSpec, value: Any) -> ApiError:
    """Salesforce's JSON deserializer complaint for a value of the wrong JSON type."""
    shown = "{" if isinstance(value, dict) else "[" if isinstance(value, list) else value
    if isinstance(value, bool):
        shown = str(value).lower()
    java = _JAVA_TYPE.get(spec.type, "string")
    return ApiError(400, "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {java} from {_token_kind(value)} value {shown} "
                    "or request may be missing a required field")


def parse_date(text: str) -> dt.date | None:
    m = _DATE_RE.match(text)
    if not m:
        return None
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def parse_datetime(text: str) -> dt.datetime | None:
    """ISO datetimes as Salesforce accepts them (`Z`, `+0100`, `+01:00`, no zone = UTC, date only)."""
    m = _DATETIME_RE.match(text)
    if not m:
        return None
    try:
        frac = (m[7] or "0")[:6].ljust(6, "0")
        tz: dt.tzinfo = dt.UTC
        if m[8] and m[8] != "Z":
            sign = 1 if m[8][0] == "+" else -1
            digits = m[8][1:].replace(":", "")
            tz = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        value = dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4] or 0), int(m[5] or 0), int(m[6] or 0),
                            int(frac), tzinfo=tz)
    except ValueError:
        return None
    return value.astimezone(dt.UTC)


def _round(spec: FieldSpec, number: Decimal) -> float | int:
    if spec.type == "int":
        return int(number.to_integral_value(rounding=ROUND_HALF_UP))
    quantum = Decimal(1).scaleb(-spec.scale)
    return float(number.quantize(quantum, rounding=ROUND_HALF_UP))


def coerce_input(spec: FieldSpec, value: Any) -> Any:
    """A JSON value from a client → the Python value the store keeps (None stays None).

    Type errors raise JSON_PARSER_ERROR as Salesforce's deserializer does; range errors raise
    NUMBER_OUTSIDE_VALID_RANGE. Length and picklist rules are the store's job.
    """
    if value is None:
        return None
    t = spec.type
    if t in STRING_TYPES:
        if isinstance(value, dict | list):
            raise parser_error(spec, value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if t in NUMBER_TYPES:
        if isinstance(value, bool) or isinstance(value, dict | list):
            raise parser_error(spec, value)
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise parser_error(spec, value) from None
        if not number.is_finite():
            raise parser_error(spec, value)
        limit_digits = (spec.digits if t == "int" else spec.precision - spec.scale) or 18
        rounded = _round(spec, number)
        if abs(Decimal(str(rounded))) >= Decimal(10) ** limit_digits:
            raise ApiError(400, "NUMBER_OUTSIDE_VALID_RANGE",
                           f"{spec.label}: value outside of valid range on numeric field: {value}", [spec.name])
        return rounded
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise parser_error(spec, value)
    if t == "date":
        parsed = parse_date(value) if isinstance(value, str) else None
        if parsed is None:
            raise parser_error(spec, value)
        return parsed
    if t == "datetime":
        parsed_dt = parse_datetime(value) if isinstance(value, str) else None
        if parsed_dt is None:
            raise parser_error(spec, value)
        return parsed_dt
    if t == "base64":
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if not isinstance(value, str):
            raise parser_error(spec, value)
        try:
            return base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            raise parser_error(spec, value) from None
    if t == "time":
        if not isinstance(value, str) or not re.match(r"^\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?Z?$", value):
            raise parser_error(spec, value)
        return value
    raise parser_error(spec, value)


def valid_email(text: str) -> bool:
    return bool(_EMAIL_RE.match(text))


def format_rest_datetime(value: dt.datetime) -> str:
    """REST form: `2026-11-27T10:00:00.000+0000`."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def format_cdc_datetime(value: dt.datetime) -> str:
    """CometD form: `2026-11-27T10:00:00.000Z`."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_rest(spec: FieldSpec, value: Any) -> Any:
    """Python value → REST record JSON (base64 fields are rendered by the caller as URLs)."""
    if value is None:
        return None
    if spec.type == "datetime":
        return format_rest_datetime(value)
    if spec.type == "date":
        return value.isoformat()
    return value


def to_cdc(spec: FieldSpec, value: Any) -> Any:
    """Python value → change event (CometD) JSON."""
    if value is None:
        return None
    if spec.type == "datetime":
        return format_cdc_datetime(value)
    if spec.type == "date":
        return value.isoformat()
    return value


def to_snapshot(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    if spec.type == "datetime":
        return value.astimezone(dt.UTC).isoformat()
    if spec.type == "date":
        return value.isoformat()
    if spec.type == "base64":
        return base64.b64encode(value).decode("ascii")
    return value


def from_snapshot(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    if spec.type == "datetime":
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    if spec.type == "date":
        return dt.date.fromisoformat(value)
    if spec.type == "base64":
        return base64.b64decode(value)
    return value


def render_rest(obj: ObjectSpec, spec: FieldSpec, record: dict[str, Any], version: str) -> Any:
    """One field of a stored record in REST JSON form (compound addresses as objects, blobs as URLs)."""
    if spec.type == "address":
        prefix = spec.name[: -len("Address")]
        parts = {
            "city": record.get(f"{prefix}City"),
            "country": record.get(f"{prefix}Country"),
            "geocodeAccuracy": record.get(f"{prefix}GeocodeAccuracy"),
            "latitude": record.get(f"{prefix}Latitude"),
            "longitude": record.get(f"{prefix}Longitude"),
            "postalCode": record.get(f"{prefix}PostalCode"),
            "state": record.get(f"{prefix}State"),
            "street": record.get(f"{prefix}Street"),
        }
        return parts if any(v is not None for v in parts.values()) else None
    if spec.type == "base64":
        if record.get(spec.name) is None:
            return None
        return f"/services/data/v{version}/sobjects/{obj.name}/{record['Id']}/{spec.name}"
    return to_rest(spec, record.get(spec.name))
