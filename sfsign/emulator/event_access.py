"""What a restricted subscriber may see of the event bus, the same on CometD and the Pub/Sub API.

Salesforce checks the subscribing user: a change event channel needs View All on its entity (all
entities: View All Data), and a change event carries only the fields the user can read, in the payload
and in `changedFields` (reference 1.6). Both transports filter the CometD-form event with these
functions before rendering it their way.
"""

from __future__ import annotations

from typing import Any

from sfsign.emulator.org import Org


def may_subscribe(org: Org, user_id: str, channel: str) -> bool:
    """A restricted user needs View All on the entity of a CDC channel."""
    access = org.store.access_for(user_id)
    if access is None or not channel.startswith("/data/"):
        return True
    entity = channel.removeprefix("/data/").removesuffix("ChangeEvent").removesuffix("__Change")
    if channel == "/data/ChangeEvents" or entity not in org.store.schema.objects:
        return False  # all entities: View All Data, which no permission set of ours grants
    perm = access.objects.get(entity)
    return perm is not None and perm.allow_read and perm.view_all_records


def visible_data(org: Org, user_id: str, data: Any) -> Any:
    """The event's `data` (schema, payload, event) as this user may see it: unreadable fields removed."""
    access = org.store.access_for(user_id)
    payload = data.get("payload") if isinstance(data, dict) else None
    header = payload.get("ChangeEventHeader") if isinstance(payload, dict) else None
    if access is None or not isinstance(payload, dict) or not isinstance(header, dict):
        return data
    obj = org.store.schema.get(str(header.get("entityName")))
    if obj is None:
        return data

    components = {(c.compound_field_name, c.compound_component): c for c in obj.fields.values()
                  if c.compound_field_name}

    def visible(name: str) -> bool:
        """`Amount`, or `BillingAddress.City` for a component of a compound field."""
        head, _, part = name.partition(".")
        spec = components.get((head, part)) if part else obj.field(head)
        if spec is None or spec.type == "address":
            return True  # compound values are filtered by their components
        return access.can_read_field(obj, spec)

    kept: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "ChangeEventHeader" or not visible(key):
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if visible(f"{key}.{k}")}
        kept[key] = value
    changed = [f for f in header.get("changedFields") or [] if visible(str(f))]
    return {**data, "payload": {**kept, "ChangeEventHeader": {**header, "changedFields": changed}}}
