"""Avro schemas written the way Salesforce's GetSchema returns them (record `com.sforce.eventbus.*`, a
`ChangeEventHeader` record first, every body field an optional union with a `doc` naming its Salesforce
type, compound fields as nested records), and Avro-encoded payloads built with fastavro from them."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

HEADER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "ChangeEventHeader", "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": "com.sforce.eventbus",
                                         "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE",
                                                     "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW",
                                                     "SNAPSHOT"]}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}

ADDRESS = {"type": "record", "name": "Address", "namespace": "com.sforce.eventbus", "fields": [
    {"name": "Street", "type": ["null", "string"], "doc": "Data:TextArea", "default": None},
    {"name": "City", "type": ["null", "string"], "doc": "Data:Text", "default": None},
    {"name": "State", "type": ["null", "string"], "doc": "Data:Text", "default": None},
    {"name": "PostalCode", "type": ["null", "string"], "doc": "Data:Text", "default": None},
    {"name": "Country", "type": ["null", "string"], "doc": "Data:Text", "default": None},
]}


def _opt(name: str, kind: Any, doc: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", kind], "doc": doc, "default": None}


#: AccountChangeEvent: position 0 the header, 1 Name, 2 Type, 3 BillingAddress, 4 ShippingAddress (the
#: named type again), 5 Phone, 6 Description, 7 OwnerId, 8 CreatedDate, 9 LastModifiedDate, 10 Stage__c,
#: 11 Signed_On__c (a Date).
ACCOUNT_CDC: dict[str, Any] = {
    "type": "record", "name": "AccountChangeEvent", "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "ChangeEventHeader", "type": HEADER_SCHEMA, "doc": "Data:ChangeEventHeader"},
        _opt("Name", "string", "Data:Text"),
        _opt("Type", "string", "Data:Picklist"),
        _opt("BillingAddress", ADDRESS, "Data:Address"),
        _opt("ShippingAddress", "Address", "Data:Address"),
        _opt("Phone", "string", "Data:Phone"),
        _opt("Description", "string", "Data:TextArea"),
        _opt("OwnerId", "string", "Data:EntityId"),
        _opt("CreatedDate", "long", "CreatedDate:DateTime"),
        _opt("LastModifiedDate", "long", "LastModifiedDate:DateTime"),
        _opt("Stage__c", "string", "Data:Picklist"),
        _opt("Signed_On__c", "int", "Data:Date"),
    ],
}

SIGN_REQUEST: dict[str, Any] = {
    "type": "record", "name": "Sign_Request__e", "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
        _opt("Record_Id__c", "string", "Data:Text"),
        _opt("Rule__c", "string", "Data:Text"),
    ],
}


def header(change_type: str, *, changed: list[str] | None = None, nulled: list[str] | None = None,
           diff: list[str] | None = None, record_id: str = "001000000000001AAA") -> dict[str, Any]:
    return {"entityName": "Account", "recordIds": [record_id], "changeType": change_type,
            "changeOrigin": "com/salesforce/api/rest/68.0", "transactionKey": "000a50de-05dd-07c4-22fb-44b7f9e72ab5",
            "sequenceNumber": 1, "commitTimestamp": 1712693965000, "commitNumber": 1082985383811,
            "commitUser": "0055f000005mc66AAA", "nulledFields": nulled or [], "diffFields": diff or [],
            "changedFields": changed or []}


def account(change_type: str, *, changed: list[str] | None = None, nulled: list[str] | None = None,
            diff: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """A full AccountChangeEvent record: every body field present, null unless given."""
    record: dict[str, Any] = {f["name"]: None for f in ACCOUNT_CDC["fields"]}
    record["ChangeEventHeader"] = header(change_type, changed=changed, nulled=nulled, diff=diff)
    record.update(fields)
    return record


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(json.dumps(schema))), record)
    return out.getvalue()
