"""Object and field-level security for a user, as a profile plus permission sets grant it.

A user the org has no entry for works as a System Administrator (sees and edits everything), which
is what every test before field-level security assumed. A user given an `Access` sees only what it
grants, as under the "Minimum Access - API Only Integrations" profile the setup guide recommends:
that profile grants no object and no field, so everything comes from the permission sets.

What Salesforce does with what a user cannot see: an invisible field does not exist for the API
(SOQL `No such column`, absent from describe, `No such column` on write), a readable field that is
not editable is reported read-only by describe and refused on write
(`INVALID_FIELD_FOR_INSERT_UPDATE`), and an invisible object is an unsupported sObject type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sfsign import metadata as md
from sfsign.emulator.schema import FieldSpec, ObjectSpec

MINIMUM_ACCESS_API_ONLY = "Minimum Access - API Only Integrations"

#: Standard objects whose access a profile or permission set grants (objectPermissions).
CRUD_OBJECTS = frozenset({"Account", "Contact", "Opportunity", "Quote", "Product2", "Pricebook2", "Lead", "Case"})
#: Detail objects without permissions of their own: access follows the parent.
CONTROLLED_BY_PARENT = {"OpportunityLineItem": "Opportunity", "QuoteLineItem": "Quote",
                        "OpportunityContactRole": "Opportunity", "PricebookEntry": "Product2"}
#: Objects whose standard fields take no field permission for this emulator (always visible).
NO_FIELD_SECURITY = frozenset({"User", "Organization", "CurrencyType", "ContentDocument", "ContentDocumentLink",
                               "RecordType", "CustomNotificationType"})
#: Objects whose standard fields have no field-level security, only their custom fields do (Files).
CUSTOM_FIELD_SECURITY_ONLY = frozenset({"ContentVersion"})


@dataclass(frozen=True)
class Access:
    """What one user may do: the union of the permission sets assigned to it."""

    profile: str = MINIMUM_ACCESS_API_ONLY
    permission_sets: tuple[str, ...] = ()
    objects: dict[str, md.ObjectPermission] = field(default_factory=dict)
    fields: dict[str, md.FieldPermission] = field(default_factory=dict)
    #: System permissions (`userPermissions`): ApiEnabled, SendCustomNotifications...
    user_permissions: frozenset[str] = frozenset()

    @classmethod
    def granted_by(cls, sets: Iterable[md.PermissionSetDef], *, revoke_fields: Iterable[str] = (),
                   read_only_fields: Iterable[str] = (), profile: str = MINIMUM_ACCESS_API_ONLY) -> Access:
        """The union of `sets`, minus `revoke_fields` and with `read_only_fields` not editable
        (`Object.Field`: what an admin who edited the permission set took away)."""
        objects: dict[str, md.ObjectPermission] = {}
        fields: dict[str, md.FieldPermission] = {}
        names = []
        granted: set[str] = set()
        for pset in sets:
            names.append(pset.name)
            granted |= pset.user_permissions
            for name, op in pset.object_permissions.items():
                was = objects.get(name, md.ObjectPermission(name))
                objects[name] = md.ObjectPermission(
                    name, was.allow_read or op.allow_read, was.allow_create or op.allow_create,
                    was.allow_edit or op.allow_edit, was.allow_delete or op.allow_delete,
                    was.view_all_records or op.view_all_records, was.modify_all_records or op.modify_all_records)
            for name, fp in pset.field_permissions.items():
                had = fields.get(name, md.FieldPermission(name, False, False))
                fields[name] = md.FieldPermission(name, had.readable or fp.readable or fp.editable,
                                                  had.editable or fp.editable)
        for name in revoke_fields:
            fields.pop(name, None)
        for name in read_only_fields:
            if name in fields:
                fields[name] = md.FieldPermission(name, fields[name].readable, False)
        return cls(profile, tuple(names), objects, fields, frozenset(granted))

    def _object(self, obj: ObjectSpec) -> md.ObjectPermission | None:
        """The permission that governs `obj`; None when the object needs none."""
        name = CONTROLLED_BY_PARENT.get(obj.name, obj.name)
        if name in CRUD_OBJECTS or obj.custom or obj.is_event:
            return self.objects.get(name, md.ObjectPermission(name))
        return None

    def can_read_object(self, obj: ObjectSpec) -> bool:
        perm = self._object(obj)
        return perm is None or perm.allow_read

    def can_create_object(self, obj: ObjectSpec) -> bool:
        perm = self._object(obj)
        if perm is not None and obj.name in CONTROLLED_BY_PARENT:
            return perm.allow_edit  # adding a line item edits the opportunity
        return perm is None or (perm.allow_read and perm.allow_create)

    def can_edit_object(self, obj: ObjectSpec) -> bool:
        perm = self._object(obj)
        return perm is None or (perm.allow_read and perm.allow_edit)

    def can_delete_object(self, obj: ObjectSpec) -> bool:
        perm = self._object(obj)
        if perm is not None and obj.name in CONTROLLED_BY_PARENT:
            return perm.allow_edit
        return perm is None or (perm.allow_read and perm.allow_delete)

    def has_permission(self, name: str) -> bool:
        """A system permission (`SendCustomNotifications`); the profile grants none of those sfsign needs."""
        return name in self.user_permissions

    def _secured(self, obj: ObjectSpec, spec: FieldSpec) -> bool:
        if obj.name in NO_FIELD_SECURITY or obj.is_event or not spec.permissionable:
            return False
        return spec.custom or obj.name not in CUSTOM_FIELD_SECURITY_ONLY

    def can_read_field(self, obj: ObjectSpec, spec: FieldSpec) -> bool:
        if not self.can_read_object(obj):
            return False
        if not self._secured(obj, spec):
            return True
        fp = self.fields.get(f"{obj.name}.{spec.name}")
        return fp is not None and fp.readable

    def can_edit_field(self, obj: ObjectSpec, spec: FieldSpec) -> bool:
        if not self.can_read_field(obj, spec):
            return False
        if not self._secured(obj, spec):
            return True
        fp = self.fields.get(f"{obj.name}.{spec.name}")
        return fp is not None and fp.editable
