"""The emulated org's database: records, transactions, Salesforce's validation and automation.

Everything a real org does on save that the daemon can observe lives here: the error codes and messages
of a failed write, system fields, derived values (contact names, line item prices, opportunity and quote
roll-ups, auto numbers), file versions, cascade deletes, and the change records that feed Change Data
Capture. All calls run on one asyncio loop, so the store is synchronous and lock-free; a transaction is
all-or-nothing through an undo log, and listeners hear about it once, after it committed.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sfsign import metadata as md
from sfsign.emulator import schema as sch
from sfsign.emulator.access import Access
from sfsign.emulator.errors import ApiError, not_found
from sfsign.emulator.ids import IdGenerator, normalize_id
from sfsign.emulator.schema import FieldSpec, ObjectSpec, OrgSchema
from sfsign.emulator.soql import QueryResult, execute_query

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "68.0"
SYSTEM_FIELDS = frozenset(
    {"Id", "IsDeleted", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp"}
)
# Never part of a change event body (SF-DOC Change Event Message Structure).
_NOT_IN_CHANGE_EVENTS = frozenset({"Id", "IsDeleted", "SystemModstamp"})
_FILE_TYPES = {
    "pdf": "PDF", "doc": "WORD", "docx": "WORD_X", "xls": "EXCEL", "xlsx": "EXCEL_X", "ppt": "POWER_POINT",
    "pptx": "POWER_POINT_X", "png": "PNG", "jpg": "JPG", "jpeg": "JPEG", "gif": "GIF", "txt": "TEXT",
    "csv": "CSV", "zip": "ZIP", "xml": "XML", "html": "HTML", "htm": "HTML", "rtf": "RTF", "json": "JSON",
}
_FORECAST_API = {"Best Case": "BestCase", "Commit": "Forecast"}

Record = dict[str, Any]
ChangeListener = Callable[[list["Change"]], None]
EventListener = Callable[[str, dict[str, Any], str], None]


@dataclass(frozen=True)
class Change:
    """One committed change of one record, already in the shape CometD change events carry."""

    entity: str
    record_id: str
    change_type: str  # CREATE | UPDATE | DELETE | UNDELETE
    fields: dict[str, Any]
    changed_fields: list[str]
    commit_user: str
    commit_timestamp_ms: int
    commit_number: int
    transaction_key: str
    sequence_number: int
    change_origin: str


@dataclass
class _Op:
    """One DML statement: the state of every record it touched before it started."""

    before: dict[str, Record | None] = field(default_factory=dict)
    explicit: set[str] = field(default_factory=set)
    # automation that is its own DML statement after this one (e.g. the primary contact role)
    then: list[Callable[[], Any]] = field(default_factory=list)


@dataclass
class _TxnState:
    user_id: str
    origin: str
    emit: bool
    system: bool
    now: dt.datetime
    key: str
    undo: dict[str, Record | None] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    commit_number: int = 0
    savepoints: list[dict[str, Record | None]] = field(default_factory=list)
    commit_ms: int = 0  # CDC commitTimestamp: milliseconds, while record datetimes keep whole seconds


class Txn:
    """Writes grouped into one Salesforce transaction (see `OrgStore.transaction`)."""

    def __init__(self, store: OrgStore, state: _TxnState) -> None:
        self._store = store
        self._state = state

    # Each statement is atomic: a failed one leaves the transaction as it was before it (a savepoint),
    # so callers may catch the ApiError and go on, as `Database.insert(records, false)` does.

    def insert(self, sobject: str, values: dict[str, Any]) -> str:
        with self._store._savepoint(self._state):
            return self._store._insert(self._state, sobject, values)

    def update(self, sobject: str, record_id: str, values: dict[str, Any]) -> None:
        with self._store._savepoint(self._state):
            self._store._update(self._state, sobject, record_id, values)

    def delete(self, sobject: str, record_id: str) -> None:
        with self._store._savepoint(self._state):
            self._store._delete(self._state, sobject, record_id)

    def undelete(self, sobject: str, record_id: str) -> None:
        with self._store._savepoint(self._state):
            self._store._undelete(self._state, sobject, record_id)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Roll back to here if the block raises (the transaction itself goes on)."""
        with self._store._savepoint(self._state):
            yield


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OrgStore:
    """In-memory records of one org, with Salesforce's save semantics."""

    def __init__(
        self,
        schema: md.Schema | OrgSchema | None = None,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        id_start: int = 1,
        org_name: str = "Emulated Org",
        _empty: bool = False,
    ) -> None:
        self.schema: OrgSchema = schema if isinstance(schema, OrgSchema) else sch.build_org_schema(schema)
        self._clock = clock or _utcnow
        self._ids = IdGenerator(start=id_start)
        self._records: dict[str, Record] = {}
        self._by_type: dict[str, dict[str, Record]] = {name: {} for name in self.schema.objects}
        self._locks: set[str] = set()
        self._listeners: list[ChangeListener] = []
        self._event_listeners: list[EventListener] = []
        self._txn: _TxnState | None = None
        self._counters: dict[str, int] = {"QuoteNumber": 0, "LineNumber": 0, "commit": 92_847_272_780}
        self._cascade_root: dict[str, str] = {}
        self._event_uuids: dict[str, str] = {}
        # child lookups (roll-ups, cascades, subqueries) by (child object, reference field) -> parent -> ids
        self._indexed: dict[str, tuple[str, ...]] = {}
        for parent in self.schema.objects.values():
            for rel in parent.child_relationships:
                fields = self._indexed.get(rel.child_sobject, ())
                if rel.field not in fields:
                    self._indexed[rel.child_sobject] = (*fields, rel.field)
        # Unique and external-id fields are indexed too, as in Salesforce, by their case-folded text:
        # uniqueness checks and `=`/IN filters on them then cost a lookup, not a scan of the object.
        self._folded: set[tuple[str, str]] = set()
        for obj in self.schema.objects.values():
            for spec in obj.fields.values():
                if spec.id_lookup and spec.name != "Id" and spec.type not in ("id", "reference"):
                    self._indexed[obj.name] = (*self._indexed.get(obj.name, ()), spec.name)
                    self._folded.add((obj.name, spec.name))
        self._children: dict[tuple[str, str], dict[str, dict[str, None]]] = {}
        self.org_id = ""
        self.standard_pricebook_id = ""
        #: Users restricted to what their permission sets grant; everyone else is a System Administrator.
        self.access: dict[str, Access] = {}
        if not _empty:
            self._bootstrap(org_name)

    # ------------------------------------------------------------------ setup and plumbing

    def _bootstrap(self, org_name: str) -> None:
        """What every new org has: its Organization record and the standard price book."""
        self.org_id = self._ids.new_id(self.schema.objects["Organization"].key_prefix)
        with self.transaction(user_id="", system=True, emit=False) as txn:
            now = self._txn.now if self._txn else self.now()
            org = self._blank("Organization", self.org_id, now, "")
            org.update(Name=org_name, DefaultLocaleSidKey="en_US", LanguageLocaleKey="en_US",
                       TimeZoneSidKey="GMT", OrganizationType="Developer Edition", InstanceName="EMU1")
            assert self._txn is not None
            op = _Op()
            self._touch(self._txn, op, self.org_id)
            self._put("Organization", org)
            self._finish_op(self._txn, op)
            self.standard_pricebook_id = txn.insert("Pricebook2", {"Name": "Standard Price Book", "IsActive": True})
            self._records[self.standard_pricebook_id]["IsStandard"] = True

    def now(self) -> dt.datetime:
        return self._clock().astimezone(dt.UTC)

    def add_listener(self, fn: ChangeListener) -> None:
        """`fn(changes)` once per committed transaction that changed records (CDC input)."""
        self._listeners.append(fn)

    def add_event_listener(self, fn: EventListener) -> None:
        """`fn(event_name, payload, event_uuid)` for each published platform event, after commit."""
        self._event_listeners.append(fn)

    def lock_record(self, record_id: str) -> None:
        """Simulate row-lock contention: writes touching this record fail with UNABLE_TO_LOCK_ROW."""
        self._locks.add(normalize_id(record_id) or record_id)

    def unlock_record(self, record_id: str) -> None:
        self._locks.discard(normalize_id(record_id) or record_id)

    def unlock_all(self) -> int:
        """Release every simulated row lock; returns how many there were."""
        count = len(self._locks)
        self._locks.clear()
        return count

    def locked_records(self) -> list[str]:
        return sorted(self._locks)

    def object(self, sobject: str) -> ObjectSpec:
        spec = self.schema.get(sobject)
        if spec is None:
            raise not_found()
        return spec

    def access_for(self, user_id: str | None) -> Access | None:
        return self.access.get(normalize_id(user_id) or user_id) if user_id else None

    def describe(self, sobject: str, api_version: str = DEFAULT_API_VERSION,
                 user_id: str | None = None) -> dict[str, Any]:
        """`sobjects/X/describe` as `user_id` sees it: CurrencyIsoCode lists the org's active currencies,
        fields the user cannot read are absent, and those it cannot edit are neither createable nor
        updateable (what the describe of a restricted user reports)."""
        obj = self.object(sobject)
        access = self.access_for(user_id)
        if access is not None and not access.can_read_object(obj):
            raise not_found()
        out = obj.describe(api_version, currency_codes=self.active_currencies() or None,
                           record_types=self.record_types(obj.name))
        if access is None:
            return out
        fields = []
        for entry in out["fields"]:
            spec = obj.fields[entry["name"]]
            if not access.can_read_field(obj, spec):
                continue
            if not access.can_edit_field(obj, spec):
                entry = {**entry, "createable": False, "updateable": False}
            fields.append(entry)
        out["fields"] = fields
        out["createable"] = out["createable"] and access.can_create_object(obj)
        out["updateable"] = out["updateable"] and access.can_edit_object(obj)
        out["deletable"] = out["deletable"] and access.can_delete_object(obj)
        return out

    def record_types(self, sobject: str) -> list[Record]:
        """The object's RecordType records (Master is not one: it exists only in describe)."""
        return [r for r in self._by_type["RecordType"].values() if r.get("SobjectType") == sobject]

    def add_record_type(self, sobject: str, developer_name: str, label: str | None = None, *,
                        active: bool = True) -> str:
        """An admin creating a record type in Setup: the RecordType record, and on the object's first one
        its `RecordTypeId` field, which Salesforce adds only then (before, SOQL naming it is INVALID_FIELD)."""
        obj = self.object(sobject)
        if any(r.get("DeveloperName") == developer_name for r in self.record_types(obj.name)):
            raise ApiError(400, "DUPLICATE_DEVELOPER_NAME",
                           f"{obj.label} already has a record type named {developer_name}", ["DeveloperName"])
        self._enable_record_types(obj.name)
        return self.insert("RecordType", {"SobjectType": obj.name, "DeveloperName": developer_name,
                                          "Name": label or developer_name, "IsActive": active},
                           user_id="", system=True, emit=False)

    def _enable_record_types(self, sobject: str) -> None:
        """Give `sobject` its RecordTypeId field, on copies (stores may share one schema)."""
        obj = self.object(sobject)
        if obj.field("RecordTypeId") is not None:
            return
        spec = replace(obj, fields=dict(obj.fields), child_relationships=list(obj.child_relationships),
                       _lower=dict(obj._lower), _rel_lower=dict(obj._rel_lower))
        spec.add(sch.record_type_field())
        self.schema = OrgSchema(spec if o.name == obj.name else o for o in self.schema.objects.values())

    def describe_global(self, api_version: str = DEFAULT_API_VERSION) -> dict[str, Any]:
        return self.schema.describe_global(api_version)

    def active_currencies(self) -> list[str]:
        return [r["IsoCode"] for r in self._by_type["CurrencyType"].values() if r["IsActive"]]

    def corporate_currency(self) -> str:
        for r in self._by_type["CurrencyType"].values():
            if r["IsCorporate"]:
                return str(r["IsoCode"])
        return "USD"

    # ------------------------------------------------------------------ reads

    def record(self, record_id: str) -> Record | None:
        """The stored record (internal values, including deleted ones) for an id in any valid form."""
        rid = normalize_id(record_id)
        return self._records.get(rid) if rid else None

    def iter_records(self, sobject: str, include_deleted: bool = False) -> Iterator[Record]:
        for rec in self._by_type.get(sobject, {}).values():
            if include_deleted or not rec.get("IsDeleted"):
                yield rec

    def is_indexed(self, sobject: str, field_name: str) -> bool:
        return field_name in self._indexed.get(sobject, ())

    def children(self, sobject: str, field_name: str, parent_id: str,
                 include_deleted: bool = False) -> list[Record]:
        """Records of `sobject` whose reference `field_name` points at `parent_id` (an indexed lookup)."""
        ids = self._children.get((sobject, field_name), {}).get(parent_id, {})
        out = [self._records[i] for i in ids]
        return out if include_deleted else [r for r in out if not r.get("IsDeleted")]

    def indexed(self, sobject: str, field_name: str, value: Any, include_deleted: bool = False) -> list[Record]:
        """Records whose indexed field (`is_indexed`) may equal `value`: a superset for text, which is
        indexed case-folded; the caller compares exactly."""
        if (sobject, field_name) in self._folded:
            key = str(value).lower()
        else:
            key = normalize_id(str(value)) or ""
        return self.children(sobject, field_name, key, include_deleted) if key else []

    def _index(self, rec: Record, add: bool) -> None:
        for name in self._indexed.get(rec["_type"], ()):
            value = rec.get(name)
            if not value:
                continue
            if (rec["_type"], name) in self._folded:
                value = str(value).lower()
            bucket = self._children.setdefault((rec["_type"], name), {})
            if add:
                bucket.setdefault(value, {})[rec["Id"]] = None
            else:
                ids = bucket.get(value)
                if ids is not None:
                    ids.pop(rec["Id"], None)

    def _set(self, rec: Record, name: str, value: Any) -> None:
        """Change one field of a live record in place (keeping the child index right)."""
        if self.is_indexed(rec["_type"], name) and rec.get(name) != value:
            self._index(rec, add=False)
            rec[name] = value
            self._index(rec, add=True)
        else:
            rec[name] = value

    def object_of(self, record_id: str) -> ObjectSpec | None:
        return self.schema.by_prefix(record_id[:3]) if record_id else None

    def get(self, sobject: str, record_id: str, fields: list[str] | None = None,
            api_version: str = DEFAULT_API_VERSION, user_id: str | None = None) -> dict[str, Any]:
        """A record in REST JSON form (`attributes` first), as `GET sobjects/X/id` returns it to `user_id`."""
        obj = self.object(sobject)
        access = self.access_for(user_id)
        if access is not None and not access.can_read_object(obj):
            raise not_found()
        rec = self._existing(obj, record_id, for_write=False)
        specs = [s for s in obj.fields.values() if access is None or access.can_read_field(obj, s)]
        if fields:
            specs = []
            for name in fields:
                spec = obj.field(name.strip())
                if spec is None or (access is not None and not access.can_read_field(obj, spec)):
                    raise ApiError(400, "INVALID_FIELD",
                                   f"No such column '{name.strip()}' on sobject of type {obj.name}")
                specs.append(spec)
        out: dict[str, Any] = {"attributes": self.attributes(obj, rec["Id"], api_version)}
        for spec in specs:
            out[spec.name] = sch.render_rest(obj, spec, rec, api_version)
        return out

    @staticmethod
    def attributes(obj: ObjectSpec, record_id: str, api_version: str) -> dict[str, str]:
        return {"type": obj.name, "url": f"/services/data/v{api_version}/sobjects/{obj.name}/{record_id}"}

    def query(self, soql: str, *, include_deleted: bool = False,
              api_version: str = DEFAULT_API_VERSION, user_id: str | None = None) -> QueryResult:
        """Run SOQL as `user_id` (None: unrestricted); the full result (paging is the REST layer's job)."""
        return execute_query(self, soql, include_deleted=include_deleted, api_version=api_version,
                             access=self.access_for(user_id))

    def find_by(self, sobject: str, field_name: str, value: Any) -> list[Record]:
        """Live records whose field equals `value` (case-insensitive for text unless case-sensitive)."""
        obj = self.object(sobject)
        spec = obj.field(field_name)
        if spec is None:
            return []
        return [r for r in self.iter_records(obj.name) if self._same_value(spec, r.get(spec.name), value)]

    @staticmethod
    def _same_value(spec: FieldSpec, a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str) and not spec.case_sensitive:
            if spec.type in ("id", "reference"):
                return (normalize_id(a) or a) == (normalize_id(b) or b)
            return a.lower() == b.lower()
        return bool(a == b)

    def _user_json(self, rec: Record) -> dict[str, Any]:
        obj = self.schema.objects["User"]
        return {name: sch.render_rest(obj, spec, rec, DEFAULT_API_VERSION) for name, spec in obj.fields.items()}

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """Users by id, in REST form without attributes."""
        return {rid: self._user_json(rec) for rid, rec in self._by_type["User"].items()}

    def user_by_username(self, username: str) -> dict[str, Any] | None:
        """A user by username (case-insensitive, as Salesforce logins are), REST form."""
        wanted = username.lower()
        for rec in self._by_type["User"].values():
            if str(rec["Username"]).lower() == wanted:
                return self._user_json(rec)
        return None

    def version_data(self, cv_id: str) -> bytes:
        rec = self.record(cv_id)
        if rec is None or not rec["Id"].startswith(self.schema.objects["ContentVersion"].key_prefix):
            raise not_found()
        if rec.get("IsDeleted"):
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
        return bytes(rec.get("VersionData") or b"")

    # ------------------------------------------------------------------ writes (public)

    @contextmanager
    def transaction(self, *, user_id: str, origin: str = "", system: bool = False,
                    emit: bool = True) -> Iterator[Txn]:
        """Group writes into one all-or-nothing transaction.

        `system=True` bypasses object and field permissions (seeding, control API acting as Salesforce
        itself); `emit=False` suppresses change and event listeners (seed data is not CDC traffic).
        A transaction opened inside another joins it, as nested DML does in Apex.
        """
        if self._txn is not None:
            with self._savepoint(self._txn):
                yield Txn(self, self._txn)
            return
        precise = self.now()
        now = precise.replace(microsecond=0)
        self._counters["commit"] += 17
        state = _TxnState(user_id=normalize_id(user_id) or user_id, origin=origin, emit=emit, system=system,
                          now=now, key=str(uuid.UUID(int=self._ids.next_value * 7919 + self._counters["commit"],
                                                      version=4)),
                          commit_number=self._counters["commit"], commit_ms=int(precise.timestamp() * 1000))
        self._txn = state
        try:
            yield Txn(self, state)
        except BaseException:
            self._rollback(state)
            raise
        finally:
            self._txn = None
        self._publish(state)

    def insert(self, sobject: str, values: dict[str, Any], *, user_id: str, origin: str = "",
               system: bool = False, emit: bool = True) -> str:
        with self.transaction(user_id=user_id, origin=origin, system=system, emit=emit) as txn:
            return txn.insert(sobject, values)

    def update(self, sobject: str, record_id: str, values: dict[str, Any], *, user_id: str, origin: str = "",
               system: bool = False, emit: bool = True) -> None:
        with self.transaction(user_id=user_id, origin=origin, system=system, emit=emit) as txn:
            txn.update(sobject, record_id, values)

    def delete(self, sobject: str, record_id: str, *, user_id: str, origin: str = "",
               system: bool = False, emit: bool = True) -> None:
        with self.transaction(user_id=user_id, origin=origin, system=system, emit=emit) as txn:
            txn.delete(sobject, record_id)

    def undelete(self, sobject: str, record_id: str, *, user_id: str, origin: str = "") -> None:
        with self.transaction(user_id=user_id, origin=origin) as txn:
            txn.undelete(sobject, record_id)

    # ------------------------------------------------------------------ transaction internals

    @contextmanager
    def _savepoint(self, state: _TxnState) -> Iterator[None]:
        log_: dict[str, Record | None] = {}
        state.savepoints.append(log_)
        n_changes, n_events = len(state.changes), len(state.events)
        try:
            yield
        except BaseException:
            self._restore(log_)
            del state.changes[n_changes:]
            del state.events[n_events:]
            raise
        finally:
            # By identity: two savepoints' logs may be equal dicts (both empty, say).
            for i in range(len(state.savepoints) - 1, -1, -1):
                if state.savepoints[i] is log_:
                    del state.savepoints[i]
                    break

    def _rollback(self, state: _TxnState) -> None:
        self._restore(state.undo)

    def _restore(self, undo: dict[str, Record | None]) -> None:
        for rid, before in reversed(list(undo.items())):
            current = self._records.get(rid)
            if current is not None:
                self._index(current, add=False)
            if before is None:
                if current is not None:
                    self._records.pop(rid, None)
                    self._by_type[current["_type"]].pop(rid, None)
            else:
                self._records[rid] = before
                self._by_type[before["_type"]][rid] = before
                self._index(before, add=True)

    def _publish(self, state: _TxnState) -> None:
        if not state.emit:
            return
        if state.changes:
            for fn in list(self._listeners):
                try:
                    fn(list(state.changes))
                except Exception:
                    log.exception("change listener failed")
        for name, payload, event_uuid in state.events:
            for efn in list(self._event_listeners):
                try:
                    efn(name, payload, event_uuid)
                except Exception:
                    log.exception("platform event listener failed")

    def _touch(self, state: _TxnState, op: _Op, rid: str) -> None:
        """Remember a record's state before this statement and this transaction changed it."""
        if rid in self._locks:
            raise ApiError(400, "UNABLE_TO_LOCK_ROW",
                           f"unable to obtain exclusive access to this record or 1 records: {rid}", [])
        if rid not in op.before:
            current = self._records.get(rid)
            op.before[rid] = copy.copy(current) if current is not None else None
        current = self._records.get(rid)
        for undo in (state.undo, *state.savepoints):
            if rid not in undo:
                undo[rid] = copy.copy(current) if current is not None else None

    def _put(self, obj_name: str, rec: Record) -> None:
        rec["_type"] = obj_name
        old = self._records.get(rec["Id"])
        if old is None:
            self._index(rec, add=True)
        elif any(old.get(n) != rec.get(n) for n in self._indexed.get(obj_name, ())):
            self._index(old, add=False)
            self._index(rec, add=True)
        self._records[rec["Id"]] = rec
        self._by_type[obj_name][rec["Id"]] = rec

    def _blank(self, obj_name: str, rid: str, now: dt.datetime, user_id: str) -> Record:
        obj = self.schema.objects[obj_name]
        rec: Record = {}
        for spec in obj.fields.values():
            if spec.type == "address":
                continue
            rec[spec.name] = spec.default_value if spec.type == "boolean" else None
        rec["Id"] = rid
        for name, value in (("CreatedDate", now), ("LastModifiedDate", now), ("SystemModstamp", now),
                            ("CreatedById", user_id or None), ("LastModifiedById", user_id or None)):
            if name in obj.fields:
                rec[name] = value
        if "IsDeleted" in obj.fields:
            rec["IsDeleted"] = False
        return rec

    def _finish_op(self, state: _TxnState, op: _Op) -> None:
        """Stamp system fields on what changed and turn the statement into Change records."""
        for rid, before in op.before.items():
            after = self._records.get(rid)
            if after is None:
                continue
            obj = self.schema.objects[after["_type"]]
            if before is None:
                change_type = "CREATE"
            elif after.get("IsDeleted") and not before.get("IsDeleted"):
                change_type = "DELETE"
            elif before.get("IsDeleted") and not after.get("IsDeleted"):
                change_type = "UNDELETE"
            else:
                change_type = "UPDATE"
                if not self._diff(obj, before, after) and rid not in op.explicit:
                    continue
            if change_type != "CREATE":
                for name, value in (("LastModifiedDate", state.now), ("SystemModstamp", state.now),
                                    ("LastModifiedById", state.user_id or None)):
                    if name in obj.fields:
                        after[name] = value
            if change_type in ("CREATE", "UNDELETE"):
                fields = self._cdc_fields(obj, after, None)
                changed: list[str] = []
            elif change_type == "DELETE":
                fields, changed = {}, []
            else:
                assert before is not None
                names = self._diff(obj, before, after)
                if "LastModifiedDate" in obj.fields and "LastModifiedDate" not in names:
                    names.append("LastModifiedDate")
                fields = self._cdc_fields(obj, after, names)
                changed = self._changed_names(obj, names)
            state.changes.append(Change(
                entity=obj.name, record_id=rid, change_type=change_type, fields=fields, changed_fields=changed,
                commit_user=state.user_id, commit_timestamp_ms=state.commit_ms,
                commit_number=state.commit_number, transaction_key=state.key,
                sequence_number=len(state.changes) + 1, change_origin=state.origin))

    @staticmethod
    def _diff(obj: ObjectSpec, before: Record, after: Record) -> list[str]:
        return [name for name, spec in obj.fields.items()
                if spec.type != "address" and name not in ("SystemModstamp", "LastModifiedDate")
                and before.get(name) != after.get(name)]

    @staticmethod
    def _changed_names(obj: ObjectSpec, names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            spec = obj.fields[name]
            if name in _NOT_IN_CHANGE_EVENTS or spec.type == "base64":
                continue
            if spec.compound_field_name:
                out.append(f"{spec.compound_field_name}.{spec.compound_component}")
            elif obj.name == "Contact" and name == "Name":
                continue
            else:
                out.append(name)
        return out

    @staticmethod
    def _cdc_fields(obj: ObjectSpec, rec: Record, names: list[str] | None) -> dict[str, Any]:
        """Body fields of a change event: all non-empty ones (names=None) or just `names`."""
        out: dict[str, Any] = {}
        wanted = list(obj.fields) if names is None else names
        for name in wanted:
            spec = obj.fields[name]
            if name in _NOT_IN_CHANGE_EVENTS or spec.type in ("base64", "address"):
                continue
            value = rec.get(name)
            if names is None and value is None:
                continue
            if spec.compound_field_name:
                compound = out.setdefault(spec.compound_field_name, {})
                compound[spec.compound_component] = sch.to_cdc(spec, value)
            elif obj.name == "Contact" and name == "Name":
                continue
            else:
                out[name] = sch.to_cdc(spec, value)
        return out

    # ------------------------------------------------------------------ validation helpers

    def _existing(self, obj: ObjectSpec, record_id: str, *, for_write: bool) -> Record:
        rid = normalize_id(record_id) if isinstance(record_id, str) else None
        if rid is None:
            raise ApiError(400, "MALFORMED_ID", f"{obj.label} ID: id value of incorrect type: {record_id}", ["Id"])
        if not rid.startswith(obj.key_prefix):
            if for_write:
                raise ApiError(400, "MALFORMED_ID", f"{obj.label} ID: id value of incorrect type: {record_id}",
                               ["Id"])
            raise not_found()
        rec = self._records.get(rid)
        if rec is None:
            if for_write:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            raise not_found()
        if rec.get("IsDeleted"):
            if for_write:
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
            raise not_found()
        return rec

    def _parse_values(self, state: _TxnState, obj: ObjectSpec, values: dict[str, Any], *,
                      creating: bool) -> dict[str, Any]:
        """Client JSON → typed values; unknown and read-only fields fail as Salesforce fails them."""
        if not isinstance(values, dict):
            raise ApiError(400, "JSON_PARSER_ERROR",
                           "Cannot deserialize instance of sobject from non-object value or request may be "
                           "missing a required field")
        parsed: dict[str, Any] = {}
        not_writeable: list[str] = []
        for key, raw in values.items():
            if key == "attributes":
                continue
            spec = obj.field(key)
            access = None if state.system else self.access_for(state.user_id)
            if spec is None or spec.type == "address" or (access is not None and not access.can_read_field(obj, spec)):
                raise ApiError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}", [])
            if spec.name == "Id":
                if creating:
                    raise ApiError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                                   "Record ID: cannot specify Id in an insert call", ["Id"])
                continue
            writeable = spec.createable if creating else spec.updateable
            if access is not None and not access.can_edit_field(obj, spec):
                writeable = False
            if not writeable and not state.system:
                not_writeable.append(spec.name)
                continue
            parsed[spec.name] = sch.coerce_input(spec, raw)
            if spec.type == "boolean" and parsed[spec.name] is None:
                parsed[spec.name] = False  # a checkbox is never null
        if not_writeable:
            raise ApiError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                           f"Unable to create/update fields: {', '.join(not_writeable)}. Please check the security "
                           "settings of this field and verify that it is read/write for your profile or "
                           "permission set.", not_writeable)
        return parsed

    def _check_values(self, obj: ObjectSpec, rec: Record, provided: dict[str, Any]) -> None:
        """Length, picklist, e-mail and reference rules on the fields a client provided."""
        for name, value in provided.items():
            spec = obj.fields[name]
            if value is None:
                if not spec.nillable and spec.createable and spec.type != "boolean":
                    raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name])
                continue
            if spec.type in sch.STRING_TYPES and spec.type not in ("id", "reference") and spec.length \
                    and len(value) > spec.length:
                raise ApiError(400, "STRING_TOO_LONG",
                               f"{spec.label}: data value too large: {value} (max length={spec.length})", [name])
            if spec.type == "picklist" and name == "CurrencyIsoCode":
                active = self.active_currencies() or list(sch.ISO_CURRENCIES)
                if value not in active:
                    raise ApiError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                   f"{spec.label}: invalid currency code: {value}", [name])
            elif spec.type == "picklist" and spec.restricted_picklist and value not in spec.picklist_values:
                raise ApiError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                               f"{spec.label}: bad value for restricted picklist field: {value}", [name])
            elif spec.type == "email" and not sch.valid_email(value):
                raise ApiError(400, "INVALID_EMAIL_ADDRESS", f"{spec.label}: invalid email address: {value}",
                               [name])
            elif spec.type == "reference":
                rec[name] = self._check_reference(spec, value)
                if name == "RecordTypeId":
                    self._check_record_type(obj, rec[name], value)

    def _check_reference(self, spec: FieldSpec, value: str) -> str:
        rid = normalize_id(value)
        target = self.object_of(rid) if rid else None
        if rid is None or target is None or (spec.reference_to and target.name not in spec.reference_to):
            raise ApiError(400, "MALFORMED_ID", f"{spec.label}: id value of incorrect type: {value}", [spec.name])
        rec = self._records.get(rid)
        if rec is None:
            raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [spec.name])
        if rec.get("IsDeleted"):
            raise ApiError(400, "ENTITY_IS_DELETED", "entity is deleted", [spec.name])
        return rid

    def _check_record_type(self, obj: ObjectSpec, rid: str, value: str) -> None:
        """Only an active record type of the record's own object can be applied to a record."""
        rt = self._records[rid]
        if rt.get("SobjectType") != obj.name or not rt.get("IsActive"):
            raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY",
                           f"Record Type ID: this ID value isn't valid for the user: {value}", ["RecordTypeId"])

    def _check_required(self, obj: ObjectSpec, rec: Record) -> None:
        missing = [s.name for s in obj.fields.values() if s.required and rec.get(s.name) in (None, "")]
        if missing:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                           missing)

    def _check_unique(self, obj: ObjectSpec, rec: Record, names: list[str]) -> None:
        for name in names:
            spec = obj.fields[name]
            value = rec.get(name)
            if not spec.unique or value in (None, ""):
                continue
            others = (self.indexed(obj.name, name, value) if self.is_indexed(obj.name, name)
                      else self.iter_records(obj.name))
            for other in others:
                if other["Id"] != rec["Id"] and self._same_value(spec, other.get(name), value):
                    raise ApiError(400, "DUPLICATE_VALUE",
                                   f"duplicate value found: {name} duplicates value on record with id: {other['Id']}",
                                   [])

    # ------------------------------------------------------------------ insert / update / delete

    def _insert(self, state: _TxnState, sobject: str, values: dict[str, Any]) -> str:
        obj = self.object(sobject)
        if obj.is_event:
            return self._publish_event(state, obj, values)
        if not obj.createable and not state.system:
            raise ApiError(400, "INVALID_TYPE_FOR_OPERATION", f"entity type cannot be inserted: {obj.label}")
        provided = self._parse_values(state, obj, values, creating=True)
        op = _Op()
        rid = self._ids.new_id(obj.key_prefix)
        rec = self._blank(obj.name, rid, state.now, state.user_id)
        rec.update(provided)
        self._auto_numbers(obj, rec)
        self._check_values(obj, rec, {k: v for k, v in provided.items() if v is not None})
        if "OwnerId" in obj.fields and rec.get("OwnerId") is None:
            rec["OwnerId"] = state.user_id or None
        if obj.has_currency and rec.get("CurrencyIsoCode") is None:
            rec["CurrencyIsoCode"] = self._default_currency(state.user_id)
        self._touch(state, op, rid)
        self._before_save(state, op, obj, rec, None, provided)
        self._check_required(obj, rec)
        self._check_unique(obj, rec, list(provided))
        self._put(obj.name, rec)
        op.explicit.add(rid)
        self._after_save(state, op, obj, rec, None)
        self._finish_op(state, op)
        for follow_up in op.then:
            follow_up()
        return rid

    def _auto_numbers(self, obj: ObjectSpec, rec: Record) -> None:
        """Custom auto-number fields: the next number in the field's display format ("SE-{00000000}")."""
        for spec in obj.fields.values():
            if spec.display_format is None:
                continue
            key = f"{obj.name}.{spec.name}"
            number = self._counters[key] = self._counters.get(key, 0) + 1

            def digits(match: re.Match[str], n: int = number) -> str:
                return f"{n:0{len(match.group(1))}d}"

            rec[spec.name] = re.sub(r"\{(0+)\}", digits, spec.display_format)

    def _update(self, state: _TxnState, sobject: str, record_id: str, values: dict[str, Any]) -> None:
        obj = self.object(sobject)
        if (not obj.updateable or obj.is_event) and not state.system:
            raise ApiError(400, "INVALID_TYPE_FOR_OPERATION", f"entity type cannot be updated: {obj.label}")
        current = self._existing(obj, record_id, for_write=True)
        provided = self._parse_values(state, obj, values, creating=False)
        op = _Op()
        rid = current["Id"]
        self._touch(state, op, rid)
        before = copy.copy(current)
        rec = copy.copy(current)
        rec.update(provided)
        self._check_values(obj, rec, provided)
        self._before_save(state, op, obj, rec, before, provided)
        self._check_required(obj, rec)
        self._check_unique(obj, rec, list(provided))
        self._put(obj.name, rec)
        op.explicit.add(rid)
        self._after_save(state, op, obj, rec, before)
        self._finish_op(state, op)

    def _delete(self, state: _TxnState, sobject: str, record_id: str) -> None:
        obj = self.object(sobject)
        if not obj.deletable and not state.system:
            raise ApiError(400, "INVALID_TYPE_FOR_OPERATION", f"entity type cannot be deleted: {obj.label}")
        rec = self._existing(obj, record_id, for_write=True)
        op = _Op()
        self._cascade_delete(state, op, rec["Id"], rec["Id"])
        self._after_delete(state, op, obj, rec)
        self._finish_op(state, op)

    def _cascade_delete(self, state: _TxnState, op: _Op, rid: str, root: str) -> None:
        rec = self._records[rid]
        obj = self.schema.objects[rec["_type"]]
        self._touch(state, op, rid)
        rec["IsDeleted"] = True
        self._cascade_root[rid] = root
        op.explicit.add(rid)
        for rel in obj.child_relationships:
            child_obj = self.schema.objects[rel.child_sobject]
            if not (rel.cascade_delete or rel.child_sobject == "ContentDocumentLink"):
                continue
            for child in self.children(child_obj.name, rel.field, rid):
                self._cascade_delete(state, op, child["Id"], root)

    def _undelete(self, state: _TxnState, sobject: str, record_id: str) -> None:
        obj = self.object(sobject)
        rid = normalize_id(record_id)
        rec = self._records.get(rid) if rid else None
        if rec is None or rec["_type"] != obj.name:
            raise not_found()
        if not rec.get("IsDeleted"):
            raise ApiError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin", [])
        op = _Op()
        for other_id, root in list(self._cascade_root.items()):
            if root == rec["Id"]:
                self._touch(state, op, other_id)
                self._records[other_id]["IsDeleted"] = False
                del self._cascade_root[other_id]
        for other in [self._records[i] for i in op.before]:
            self._after_save(state, op, self.schema.objects[other["_type"]], other, None)
        self._finish_op(state, op)

    def _default_currency(self, user_id: str) -> str:
        user = self._records.get(user_id) if user_id else None
        if user and user.get("DefaultCurrencyIsoCode") in (self.active_currencies() or sch.ISO_CURRENCIES):
            return str(user["DefaultCurrencyIsoCode"])
        return self.corporate_currency()

    # ------------------------------------------------------------------ platform events

    def _publish_event(self, state: _TxnState, obj: ObjectSpec, values: dict[str, Any]) -> str:
        provided = self._parse_values(state, obj, values, creating=True)
        rec = {name: None for name in obj.fields}
        rec.update(provided)
        self._check_values(obj, rec, {k: v for k, v in provided.items() if v is not None})
        self._check_required(obj, rec)
        event_id = self._ids.new_id(obj.key_prefix)
        event_uuid = str(uuid.uuid4())
        created = self.now()
        payload: dict[str, Any] = {
            "CreatedDate": sch.format_cdc_datetime(created),
            # Salesforce sends the 15-character user id here (SF-DOC platform event example).
            "CreatedById": state.user_id[:15] if state.user_id else None,
        }
        for spec in obj.fields.values():
            if spec.custom:
                payload[spec.name] = sch.to_cdc(spec, rec.get(spec.name))
        state.events.append((obj.name, payload, event_uuid))
        self._event_uuids[event_id] = event_uuid
        while len(self._event_uuids) > 10_000:
            del self._event_uuids[next(iter(self._event_uuids))]
        return event_id

    def event_uuid(self, event_id: str) -> str | None:
        """The EventUuid of a platform event this store published (REST returns it as OPERATION_ENQUEUED)."""
        return self._event_uuids.get(event_id)

    # ------------------------------------------------------------------ business rules

    def _before_save(self, state: _TxnState, op: _Op, obj: ObjectSpec, rec: Record, before: Record | None,
                     provided: dict[str, Any]) -> None:
        """What Salesforce computes before a record is saved (derived fields and integrity rules)."""
        name = obj.name
        if name in ("Contact", "User"):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p) or None
        if name == "User":
            rec["UserType"] = rec.get("UserType") or "Standard"
            rec["DefaultCurrencyIsoCode"] = rec.get("DefaultCurrencyIsoCode") or rec.get("CurrencyIsoCode")
        elif name == "Opportunity":
            self._opportunity_before(rec, before, provided)
        elif name in ("OpportunityLineItem", "QuoteLineItem"):
            self._line_item_before(state, op, obj, rec, before, provided)
        elif name == "Quote":
            self._quote_before(rec, before)
        elif name == "PricebookEntry":
            self._pricebook_entry_before(rec, before)
        elif name == "CurrencyType":
            self._currency_before(rec, before)
        elif name == "ContentVersion":
            self._content_version_before(state, op, rec, before, provided)
        elif name == "ContentDocumentLink" and before is None:
            rec["ShareType"] = rec.get("ShareType") or "V"
            rec["Visibility"] = rec.get("Visibility") or "AllUsers"
            for other in self.children("ContentDocumentLink", "ContentDocumentId", rec["ContentDocumentId"]):
                if other["LinkedEntityId"] == rec["LinkedEntityId"]:
                    raise ApiError(400, "DUPLICATE_VALUE",
                                   f"duplicate value found: <unknown> duplicates value on record with id: "
                                   f"{other['Id']}", [])

    def _after_save(self, state: _TxnState, op: _Op, obj: ObjectSpec, rec: Record, before: Record | None) -> None:
        """Automation after save: roll-ups into parents, primary contact roles, file documents."""
        name = obj.name
        if name == "OpportunityLineItem":
            self._rollup_opportunity(state, op, rec["OpportunityId"])
        elif name == "QuoteLineItem":
            self._rollup_quote(state, op, rec["QuoteId"])
        elif name == "OpportunityContactRole":
            self._sync_primary_contact(state, op, rec)
        elif name == "Opportunity":
            if before is None and rec.get("ContactId"):
                values = {"OpportunityId": rec["Id"], "ContactId": rec["ContactId"], "IsPrimary": True}
                op.then.append(lambda: self._insert(state, "OpportunityContactRole", values))
            if before is not None and before.get("Name") != rec.get("Name"):
                for oli in self.children("OpportunityLineItem", "OpportunityId", rec["Id"]):
                    product = self._records.get(oli["Product2Id"]) or {}
                    self._touch(state, op, oli["Id"])
                    oli["Name"] = f"{rec['Name']} {product.get('Name', '')}".strip()
        elif name == "ContentVersion" and before is None:
            self._content_version_after(state, op, rec)

    def _after_delete(self, state: _TxnState, op: _Op, obj: ObjectSpec, rec: Record) -> None:
        deleted = [self._records[i] for i in op.before]
        for other in deleted:
            if other["_type"] == "OpportunityLineItem":
                parent = self._records.get(other["OpportunityId"])
                if parent and not parent.get("IsDeleted"):
                    self._rollup_opportunity(state, op, parent["Id"])
            elif other["_type"] == "QuoteLineItem":
                parent = self._records.get(other["QuoteId"])
                if parent and not parent.get("IsDeleted"):
                    self._rollup_quote(state, op, parent["Id"])
            elif other["_type"] == "OpportunityContactRole":
                parent = self._records.get(other["OpportunityId"])
                if parent and not parent.get("IsDeleted") and parent.get("ContactId") == other["ContactId"] \
                        and other.get("IsPrimary"):
                    self._touch(state, op, parent["Id"])
                    self._set(parent, "ContactId", None)

    def _opportunity_before(self, rec: Record, before: Record | None, provided: dict[str, Any]) -> None:
        stage = rec.get("StageName")
        stage_info = {s: (p, f) for s, p, f in sch.OPPORTUNITY_STAGES}.get(stage or "")
        stage_changed = before is None or before.get("StageName") != stage
        if stage_info and stage_changed:
            if "Probability" not in provided or provided["Probability"] is None:
                rec["Probability"] = float(stage_info[0])
            if "ForecastCategoryName" not in provided or provided["ForecastCategoryName"] is None:
                rec["ForecastCategoryName"] = stage_info[1]
        rec["ForecastCategory"] = _FORECAST_API.get(rec.get("ForecastCategoryName") or "",
                                                    rec.get("ForecastCategoryName"))
        rec["IsClosed"] = stage in sch.CLOSED_STAGES
        rec["IsWon"] = sch.CLOSED_STAGES.get(stage or "", False)
        if before is not None and before.get("HasOpportunityLineItem"):
            if provided.get("CurrencyIsoCode") not in (None, before.get("CurrencyIsoCode")):
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               "field integrity exception: unknown (cannot change currency of an opportunity "
                               "with products)", ["CurrencyIsoCode"])
            if provided.get("Pricebook2Id", before.get("Pricebook2Id")) != before.get("Pricebook2Id"):
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               "field integrity exception: Pricebook2Id (cannot change the price book of an "
                               "opportunity with products)", ["Pricebook2Id"])
            rec["Amount"] = before.get("Amount")
        close = rec.get("CloseDate")
        if isinstance(close, dt.date):
            quarter = (close.month - 1) // 3 + 1
            rec.update(FiscalYear=close.year, FiscalQuarter=quarter, Fiscal=f"{close.year} {quarter}")
        amount, prob = rec.get("Amount"), rec.get("Probability")
        rec["ExpectedRevenue"] = round(amount * prob / 100, 2) if amount is not None and prob is not None else None

    def _pricebook_entry_for(self, parent: Record, rec: Record, provided: dict[str, Any]) -> Record:
        """The price book entry a new line item uses (given directly or found by Product2Id)."""
        pbe_id = rec.get("PricebookEntryId")
        if pbe_id:
            pbe = self._records[pbe_id]
            if provided.get("Product2Id") and provided["Product2Id"] != pbe["Product2Id"]:
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               "field integrity exception: PricebookEntryId, Product2Id (product id does not "
                               "match the pricebook entry's product)", ["Product2Id"])
            return pbe
        product_id = rec.get("Product2Id")
        if not product_id:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [PricebookEntryId]",
                           ["PricebookEntryId"])
        pricebook = parent.get("Pricebook2Id") or self.standard_pricebook_id
        for pbe in self.children("PricebookEntry", "Product2Id", product_id):
            if pbe["Pricebook2Id"] == pricebook and \
                    pbe["CurrencyIsoCode"] == parent.get("CurrencyIsoCode"):
                return pbe
        raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                       "field integrity exception: PricebookEntryId, unknown (no price book entry for this product "
                       "in the price book and currency of the parent)", ["Product2Id"])

    def _line_item_before(self, state: _TxnState, op: _Op, obj: ObjectSpec, rec: Record, before: Record | None,
                          provided: dict[str, Any]) -> None:
        parent_field = "OpportunityId" if obj.name == "OpportunityLineItem" else "QuoteId"
        parent_kind = "opportunity" if parent_field == "OpportunityId" else "quote"
        parent = self._records.get(rec.get(parent_field) or "")
        if parent is None:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{parent_field}]",
                           [parent_field])
        if before is None:
            pbe = self._pricebook_entry_for(parent, rec, provided)
            if not pbe.get("IsActive"):
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               "field integrity exception: PricebookEntryId (pricebook entry is inactive)",
                               ["PricebookEntryId"])
            if pbe["CurrencyIsoCode"] != parent.get("CurrencyIsoCode"):
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               f"field integrity exception: PricebookEntryId (pricebook entry currency code does "
                               f"not match {parent_kind} currency code)", ["PricebookEntryId"])
            if parent.get("Pricebook2Id") is None:
                self._touch(state, op, parent["Id"])
                self._set(parent, "Pricebook2Id", pbe["Pricebook2Id"])
            elif parent["Pricebook2Id"] != pbe["Pricebook2Id"]:
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               f"field integrity exception: PricebookEntryId (pricebook entry is in a different "
                               f"pricebook than the one assigned to the {parent_kind})", ["PricebookEntryId"])
            product = self._records[pbe["Product2Id"]]
            rec.update(PricebookEntryId=pbe["Id"], Product2Id=product["Id"], ListPrice=pbe["UnitPrice"],
                       CurrencyIsoCode=parent.get("CurrencyIsoCode"))
            if obj.name == "OpportunityLineItem":
                rec["Name"] = f"{parent.get('Name') or ''} {product['Name']}".strip()
                rec["ProductCode"] = product.get("ProductCode")
            else:
                self._counters["LineNumber"] += 1
                rec["LineNumber"] = f"{self._counters['LineNumber']:08d}"
        unit_given = provided.get("UnitPrice") is not None
        total_given = provided.get("TotalPrice") is not None
        if unit_given and total_given:
            raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                           "field integrity exception: TotalPrice (cannot specify both UnitPrice and TotalPrice)",
                           ["TotalPrice"])
        quantity = rec.get("Quantity")
        if quantity is not None and quantity == 0:
            raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                           "field integrity exception: Quantity (quantity must be nonzero)", ["Quantity"])
        discount = rec.get("Discount")
        if discount is not None and not 0 <= discount <= 100:
            raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                           "field integrity exception: Discount (discount must be between 0 and 100 percent)",
                           ["Discount"])
        factor = 1 - (discount or 0) / 100
        if total_given and quantity:
            rec["UnitPrice"] = round(provided["TotalPrice"] / (quantity * factor), 2) if factor else 0.0
        if before is None and not unit_given and not total_given:
            raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                           "field integrity exception: unknown (must specify either UnitPrice or TotalPrice)",
                           ["UnitPrice"])
        if quantity is not None and rec.get("UnitPrice") is not None:
            subtotal = round(quantity * rec["UnitPrice"], 2)
            rec["Subtotal"] = subtotal
            rec["TotalPrice"] = provided["TotalPrice"] if total_given else round(subtotal * factor, 2)

    def _rollup_opportunity(self, state: _TxnState, op: _Op, opp_id: str) -> None:
        opp = self._records.get(opp_id)
        if opp is None or opp.get("IsDeleted"):
            return
        items = self.children("OpportunityLineItem", "OpportunityId", opp_id)
        self._touch(state, op, opp_id)
        opp["HasOpportunityLineItem"] = bool(items)
        if items:
            opp["Amount"] = round(sum(r["TotalPrice"] or 0 for r in items), 2)
            opp["TotalOpportunityQuantity"] = sum(r["Quantity"] or 0 for r in items)
        else:
            opp["TotalOpportunityQuantity"] = None
        prob = opp.get("Probability")
        opp["ExpectedRevenue"] = (round(opp["Amount"] * prob / 100, 2)
                                  if opp.get("Amount") is not None and prob is not None else None)

    def _quote_before(self, rec: Record, before: Record | None) -> None:
        if before is None:
            opp = self._records[rec["OpportunityId"]]
            rec["AccountId"] = opp.get("AccountId")
            rec["CurrencyIsoCode"] = opp.get("CurrencyIsoCode")
            rec["Pricebook2Id"] = rec.get("Pricebook2Id") or opp.get("Pricebook2Id")
            rec["Status"] = rec.get("Status") or "Draft"
            self._counters["QuoteNumber"] += 1
            rec["QuoteNumber"] = f"{self._counters['QuoteNumber']:08d}"
            rec.update(Subtotal=0.0, TotalPrice=0.0, LineItemCount=0)
        self._quote_totals(rec)

    @staticmethod
    def _quote_totals(rec: Record) -> None:
        subtotal, total = rec.get("Subtotal") or 0.0, rec.get("TotalPrice") or 0.0
        rec["Discount"] = round((subtotal - total) / subtotal * 100, 2) if subtotal else None
        rec["GrandTotal"] = round(total + (rec.get("Tax") or 0) + (rec.get("ShippingHandling") or 0), 2)

    def _rollup_quote(self, state: _TxnState, op: _Op, quote_id: str) -> None:
        quote = self._records.get(quote_id)
        if quote is None or quote.get("IsDeleted"):
            return
        items = self.children("QuoteLineItem", "QuoteId", quote_id)
        self._touch(state, op, quote_id)
        quote["Subtotal"] = round(sum(r["Subtotal"] or 0 for r in items), 2)
        quote["TotalPrice"] = round(sum(r["TotalPrice"] or 0 for r in items), 2)
        quote["LineItemCount"] = len(items)
        self._quote_totals(quote)

    def _sync_primary_contact(self, state: _TxnState, op: _Op, rec: Record) -> None:
        """One primary contact role per opportunity; Opportunity.ContactId mirrors it."""
        opp = self._records.get(rec["OpportunityId"])
        if opp is None:
            return
        if rec.get("IsPrimary"):
            for other in self.children("OpportunityContactRole", "OpportunityId", opp["Id"]):
                if other["Id"] != rec["Id"] and other.get("IsPrimary"):
                    self._touch(state, op, other["Id"])
                    other["IsPrimary"] = False
        primary = next((r["ContactId"] for r in self.children("OpportunityContactRole", "OpportunityId", opp["Id"])
                        if r.get("IsPrimary")), None)
        if opp.get("ContactId") != primary:
            self._touch(state, op, opp["Id"])
            self._set(opp, "ContactId", primary)

    def _pricebook_entry_before(self, rec: Record, before: Record | None) -> None:
        product = self._records[rec["Product2Id"]]
        rec["Name"] = product.get("Name")
        rec["ProductCode"] = product.get("ProductCode")
        if before is not None:
            return
        siblings = [r for r in self.children("PricebookEntry", "Product2Id", rec["Product2Id"])
                    if r["CurrencyIsoCode"] == rec["CurrencyIsoCode"]]
        if any(r["Pricebook2Id"] == rec["Pricebook2Id"] for r in siblings):
            raise ApiError(400, "DUPLICATE_VALUE", "This price definition already exists in this price book", [])
        if rec["Pricebook2Id"] != self.standard_pricebook_id and \
                not any(r["Pricebook2Id"] == self.standard_pricebook_id for r in siblings):
            raise ApiError(400, "STANDARD_PRICE_NOT_DEFINED", "No standard price defined for this product", [])

    def _currency_before(self, rec: Record, before: Record | None) -> None:
        if before is None:
            if any(r["IsoCode"] == rec["IsoCode"] for r in self.iter_records("CurrencyType")):
                raise ApiError(400, "DUPLICATE_VALUE",
                               f"duplicate value found: IsoCode duplicates value on record with id: {rec['IsoCode']}",
                               [])
            if rec.get("DecimalPlaces") is None:
                rec["DecimalPlaces"] = 2
        if rec.get("IsCorporate"):
            rec["ConversionRate"] = 1.0
            rec["IsActive"] = True

    def _content_version_before(self, state: _TxnState, op: _Op, rec: Record, before: Record | None,
                                provided: dict[str, Any]) -> None:
        if before is not None:
            return
        path = rec.get("PathOnClient")
        missing = [n for n in ("PathOnClient", "VersionData") if rec.get(n) is None]
        if rec.get("ContentUrl") and not path:
            missing = []
        if missing:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                           missing)
        data: bytes = rec.get("VersionData") or b""
        filename = (path or "").replace("\\", "/").rsplit("/", 1)[-1]
        stem, dot, ext = filename.rpartition(".")
        if not dot:
            stem, ext = filename, ""
        rec["Title"] = rec.get("Title") or stem or filename
        rec["FileExtension"] = ext.lower() or None
        rec["FileType"] = _FILE_TYPES.get(ext.lower(), "UNKNOWN") if rec.get("VersionData") is not None else "LINK"
        rec["ContentSize"] = len(data)
        rec["Checksum"] = hashlib.md5(data, usedforsecurity=False).hexdigest()
        rec["IsLatest"] = True
        rec["Origin"] = rec.get("Origin") or "C"
        rec["ContentLocation"] = rec.get("ContentLocation") or "S"
        rec["SharingOption"] = rec.get("SharingOption") or "A"
        rec["SharingPrivacy"] = rec.get("SharingPrivacy") or "N"
        rec["ContentModifiedDate"] = rec.get("ContentModifiedDate") or state.now
        rec["ContentModifiedById"] = state.user_id or None
        doc_id = rec.get("ContentDocumentId")
        if doc_id:
            if rec.get("FirstPublishLocationId"):
                raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION",
                               "field integrity exception: FirstPublishLocationId (can only be set on the first "
                               "version of a document)", ["FirstPublishLocationId"])
            versions = self.children("ContentVersion", "ContentDocumentId", doc_id)
            rec["VersionNumber"] = str(len(versions) + 1)
            for old in versions:
                if old.get("IsLatest"):
                    self._touch(state, op, old["Id"])
                    old["IsLatest"] = False
            rec["PublishStatus"] = self._records[doc_id].get("PublishStatus")
        else:
            rec["VersionNumber"] = "1"
            rec["PublishStatus"] = "P" if rec.get("FirstPublishLocationId") else "R"

    def _content_version_after(self, state: _TxnState, op: _Op, rec: Record) -> None:
        """First version → new ContentDocument (+ links); later versions → document points at them."""
        doc_values = {"Title": rec["Title"], "LatestPublishedVersionId": rec["Id"], "ContentSize": rec["ContentSize"],
                      "FileType": rec["FileType"], "FileExtension": rec["FileExtension"],
                      "ContentModifiedDate": rec["ContentModifiedDate"]}
        doc_id = rec.get("ContentDocumentId")
        if doc_id:
            doc = self._records[doc_id]
            self._touch(state, op, doc_id)
            doc.update(doc_values)
            return
        doc_obj = self.schema.objects["ContentDocument"]
        doc_id = self._ids.new_id(doc_obj.key_prefix)
        self._touch(state, op, doc_id)
        doc = self._blank(doc_obj.name, doc_id, state.now, state.user_id)
        doc.update(doc_values, OwnerId=rec.get("OwnerId"), PublishStatus=rec["PublishStatus"],
                   SharingOption=rec["SharingOption"], SharingPrivacy=rec["SharingPrivacy"])
        self._put(doc_obj.name, doc)
        self._set(rec, "ContentDocumentId", doc_id)
        owner = rec.get("OwnerId")
        targets = [t for t in (owner, rec.get("FirstPublishLocationId")) if t]
        for target in dict.fromkeys(targets):
            link_obj = self.schema.objects["ContentDocumentLink"]
            link_id = self._ids.new_id(link_obj.key_prefix)
            self._touch(state, op, link_id)
            link = self._blank(link_obj.name, link_id, state.now, state.user_id)
            link.update(ContentDocumentId=doc_id, LinkedEntityId=target, ShareType="I", Visibility="AllUsers")
            self._put(link_obj.name, link)

    # ------------------------------------------------------------------ snapshot / restore

    def snapshot(self) -> dict[str, Any]:
        """The whole org as a JSON-able dict (for a restart that keeps state)."""
        records: dict[str, list[dict[str, Any]]] = {}
        for obj_name, recs in self._by_type.items():
            obj = self.schema.objects[obj_name]
            rows = []
            for rec in recs.values():
                rows.append({k: sch.to_snapshot(obj.fields[k], v) for k, v in rec.items() if k in obj.fields})
            if rows:
                records[obj_name] = rows
        return {
            "format": 1,
            "org_id": self.org_id,
            "standard_pricebook_id": self.standard_pricebook_id,
            "id_next": self._ids.next_value,
            "counters": dict(self._counters),
            "cascade_root": dict(self._cascade_root),
            "locks": sorted(self._locks),
            "records": records,
        }

    @classmethod
    def restore(cls, data: dict[str, Any], schema: md.Schema | OrgSchema | None = None, *,
                clock: Callable[[], dt.datetime] | None = None) -> OrgStore:
        """Rebuild a store from `snapshot()` output (listeners are not part of the state)."""
        store = cls(schema, clock=clock, id_start=int(data["id_next"]), _empty=True)
        store.org_id = data["org_id"]
        store.standard_pricebook_id = data["standard_pricebook_id"]
        store._counters.update(data["counters"])
        store._cascade_root = dict(data.get("cascade_root", {}))
        store._locks = set(data.get("locks", []))
        for row in data["records"].get("RecordType", []):
            store._enable_record_types(str(row["SobjectType"]))
        for obj_name, rows in data["records"].items():
            obj = store.schema.objects[obj_name]
            for row in rows:
                rec = store._blank(obj_name, row["Id"], store.now(), "")
                rec.update({k: sch.from_snapshot(obj.fields[k], v) for k, v in row.items() if k in obj.fields})
                store._put(obj_name, rec)
        return store


__all__ = ["Change", "OrgStore", "QueryResult", "Txn"]
