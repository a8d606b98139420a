"""The demo org: deterministic, quiet (no change events), realistic and with the two broken opportunities."""

from __future__ import annotations

from sfsign.emulator.seed import INTEGRATION_USERNAME, seed_org
from sfsign.emulator.store import Change, OrgStore


def test_seed_is_deterministic() -> None:
    first, second = OrgStore(), OrgStore()
    assert seed_org(first) == seed_org(second)
    assert first.snapshot()["records"].keys() == second.snapshot()["records"].keys()


def test_seed_emits_no_change_or_platform_events() -> None:
    store = OrgStore()
    batches: list[list[Change]] = []
    events: list[object] = []
    store.add_listener(batches.append)
    store.add_event_listener(lambda *a: events.append(a))
    seed_org(store)
    assert batches == [] and events == []


def test_seed_content() -> None:
    store = OrgStore()
    info = seed_org(store)
    assert info.integration_username == INTEGRATION_USERNAME
    assert store.user_by_username(INTEGRATION_USERNAME)["Id"] == info.integration_user_id  # type: ignore[index]
    assert len(store.users) == 4
    org = store.get("Organization", store.org_id)
    assert org["Name"] == "Northwind Cloud GmbH" and org["City"] == "Berlin"
    currencies = store.query("SELECT IsoCode, IsCorporate, ConversionRate FROM CurrencyType ORDER BY IsoCode").records
    assert [(c["IsoCode"], c["IsCorporate"]) for c in currencies] == [("EUR", True), ("USD", False)]
    assert store.query("SELECT Id FROM PricebookEntry WHERE CurrencyIsoCode = 'USD'").total_size == 8
    countries = {r["BillingCountry"] for r in store.query("SELECT BillingCountry FROM Account").records}
    assert countries == {"France", "Germany", "United States", "United Kingdom"}
    opps = store.query("SELECT Name, StageName, (SELECT Id FROM OpportunityLineItems), "
                       "(SELECT Id FROM OpportunityContactRoles WHERE IsPrimary = true) FROM Opportunity").records
    assert len(opps) == 8
    assert all(o["StageName"] not in ("Proposal/Price Quote", "Closed Won") for o in opps)
    no_lines = [o["Name"] for o in opps if o["OpportunityLineItems"] is None]
    no_roles = [o["Name"] for o in opps if o["OpportunityContactRoles"] is None]
    assert no_lines == ["Hanse Logistik - Data Migration"]
    assert no_roles == ["Lumière Santé - Pilot"]
    assert store.get("Opportunity", info.opportunities[info.opportunity_without_line_items])["Amount"] is None
    assert all(2 <= o["OpportunityLineItems"]["totalSize"] <= 6 for o in opps if o["OpportunityLineItems"])
    quotes = store.query("SELECT Status, CurrencyIsoCode, LineItemCount FROM Quote").records
    assert len(quotes) == 3 and {q["Status"] for q in quotes} == {"Draft"}
    assert sorted(q["CurrencyIsoCode"] for q in quotes) == ["EUR", "EUR", "USD"]
    assert all(q["LineItemCount"] > 0 for q in quotes)
