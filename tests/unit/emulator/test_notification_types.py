"""The package's custom notification types in the emulator's store, in-process: one CustomNotificationType
record per type however often the package is deployed, readable by a minimum-access integration user, and
the permission set's Send Custom Notifications carried into the user's access."""

from __future__ import annotations

from sfsign import metadata as md
from sfsign.emulator.access import Access
from sfsign.emulator.notifications import PERMISSION, deploy_notification_types
from sfsign.emulator.seed import seed_org
from sfsign.emulator.store import OrgStore
from sfsign.salesforce import names


def test_a_deploy_creates_each_type_once_and_a_restricted_user_reads_it() -> None:
    meta = md.load_schema()
    store = OrgStore(meta)
    info = seed_org(store)
    [created] = deploy_notification_types(store, meta)
    assert deploy_notification_types(store, meta) == [], "a second deploy adds nothing"
    store.access[info.integration_user_id] = Access.granted_by([meta.permission_sets["sfsign_Integration"]])
    soql = (f"SELECT Id, DeveloperName, CustomNotifTypeName, Desktop, Mobile FROM CustomNotificationType "
            f"WHERE DeveloperName = '{names.NotificationType.SIGNATURE_OUTCOME}'")
    [row] = store.query(soql, user_id=info.integration_user_id).records
    ntype = meta.notification_types[names.NotificationType.SIGNATURE_OUTCOME]
    assert (row["Id"], row["CustomNotifTypeName"], row["Desktop"], row["Mobile"]) == (created, ntype.label, True, True)
    assert created.startswith("0ML")


def test_send_custom_notifications_comes_from_the_integration_set_only() -> None:
    meta = md.load_schema()
    assert Access.granted_by([meta.permission_sets["sfsign_Integration"]]).has_permission(PERMISSION)
    assert not Access.granted_by([meta.permission_sets["sfsign_Viewer"]]).has_permission(PERMISSION)
    assert PERMISSION == names.SEND_CUSTOM_NOTIFICATIONS_PERMISSION
