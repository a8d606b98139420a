"""Field-level security in the emulator's store: what a restricted user cannot see does not exist for it."""

from __future__ import annotations

import pytest

from sfsign import metadata as md
from sfsign.emulator.access import Access
from sfsign.emulator.errors import ApiError
from sfsign.emulator.seed import SeedInfo, seed_org
from sfsign.emulator.store import OrgStore


@pytest.fixture
def seeded() -> tuple[OrgStore, SeedInfo]:
    meta = md.load_schema()
    store = OrgStore(meta)
    info = seed_org(store)
    integration = meta.permission_sets["sfsign_Integration"]
    store.access[info.integration_user_id] = Access.granted_by(
        [integration], revoke_fields=["Account.Phone", "Opportunity.AccountId", "OpportunityLineItem.Discount"])
    return store, info


def _fails(store: OrgStore, user: str, soql: str) -> ApiError:
    with pytest.raises(ApiError) as exc:
        store.query(soql, user_id=user)
    return exc.value


def test_a_hidden_field_behind_a_relationship_or_in_a_subquery_is_no_such_column(
    seeded: tuple[OrgStore, SeedInfo],
) -> None:
    store, info = seeded
    user = info.integration_user_id
    assert store.query("SELECT Id, Account.Phone FROM Quote LIMIT 1").records, "unrestricted: visible"
    hidden = _fails(store, user, "SELECT Id, Account.Phone FROM Quote LIMIT 1")
    assert hidden.error_code == "INVALID_FIELD" and "No such column 'Phone' on entity 'Account'" in hidden.message
    sub = _fails(store, user, "SELECT Id, (SELECT Discount FROM OpportunityLineItems) FROM Opportunity")
    assert "No such column 'Discount' on entity 'OpportunityLineItem'" in sub.message


def test_a_hidden_lookup_cannot_be_followed(seeded: tuple[OrgStore, SeedInfo]) -> None:
    store, info = seeded
    exc = _fails(store, info.integration_user_id, "SELECT Account.Name FROM Opportunity LIMIT 1")
    assert exc.error_code == "INVALID_FIELD" and "Didn't understand relationship 'Account'" in exc.message


def test_required_fields_need_no_grant_and_other_users_are_unrestricted(seeded: tuple[OrgStore, SeedInfo]) -> None:
    store, info = seeded
    rows = store.query("SELECT Name, CloseDate, StageName, Amount FROM Opportunity LIMIT 1",
                       user_id=info.integration_user_id).records
    assert rows and rows[0]["CloseDate"]
    assert store.query("SELECT Account.Phone FROM Opportunity LIMIT 1", user_id=info.users["lena"]).records


def test_an_object_without_read_is_not_supported(seeded: tuple[OrgStore, SeedInfo]) -> None:
    store, info = seeded
    bare = info.users["marc"]
    store.access[bare] = Access.granted_by([])  # the minimum-access profile alone
    exc = _fails(store, bare, "SELECT Id FROM Opportunity")
    assert exc.error_code == "INVALID_TYPE" and "sObject type 'Opportunity' is not supported." in exc.message
    with pytest.raises(ApiError) as described:
        store.describe("Opportunity", user_id=bare)
    assert described.value.status == 404 and described.value.error_code == "NOT_FOUND"
    assert store.describe("User", user_id=bare)["fields"], "objects without permissions stay visible"
