"""The batched Salesforce calls against the emulator: many records, files and audit rows per API call.

Each test counts the emulator's own API usage, so "one call" is what the org would bill, not what
the client believes it sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sfsign.emulator.ids import to18
from sfsign.emulator.server import Emulator
from sfsign.salesforce.auth import AuthConfig, Authenticator
from sfsign.salesforce.files import NewFile
from sfsign.salesforce.record_parsing import fetch_records
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.writeback import OutcomeEvent, SignedFile, WriteBack, Written, WrittenEvent, write_back_many


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
async def rest(emulator: Emulator) -> AsyncIterator[SalesforceRest]:
    login = emulator.login
    auth = Authenticator(AuthConfig(login_url=emulator.url, flow="jwt", consumer_key=login.consumer_key,
                                    username=login.username, private_key_file=login.private_key_file,
                                    ca_bundle=emulator.ca_file))
    client = SalesforceRest(auth, api_version="68.0")
    yield client
    await client.close()
    await auth.aclose()


async def _ids(rest: SalesforceRest, n: int) -> list[str]:
    return [str(r["Id"]) for r in await rest.query(f"SELECT Id FROM Opportunity ORDER BY Name LIMIT {n}")]


def _calls(emulator: Emulator) -> int:
    return emulator.org.api_calls


async def test_many_queries_go_five_per_composite_call(emulator: Emulator, rest: SalesforceRest) -> None:
    ids = (await _ids(rest, 6))[:6]
    assert len(ids) == 6, "the seed has fewer opportunities than this test needs"
    soqls = [f"SELECT Id, Name FROM Opportunity WHERE Id = '{i}'" for i in ids * 2]
    before = _calls(emulator)
    results = await rest.query_many(soqls)
    assert [r[0]["Id"] for r in results] == ids * 2
    assert _calls(emulator) - before == 3  # 12 queries: 5 + 5 + 2


async def test_fetch_records_for_more_than_200_ids_costs_one_call(emulator: Emulator, rest: SalesforceRest) -> None:
    ids = await _ids(rest, 5)
    # 300 well-formed ids of records that do not exist force two IN lists (200 + 105).
    wanted = ids + [to18(f"006Zz{n:010d}") for n in range(300)]
    before = _calls(emulator)
    records = await fetch_records(rest, "Opportunity", wanted)
    assert _calls(emulator) - before == 1
    assert set(ids) <= set(records) and len({r.id for r in records.values()}) == len(ids)


async def test_files_upload_in_one_collections_call_and_write_back_with_audit_in_one_composite(
    emulator: Emulator, rest: SalesforceRest, tmp_path: Path
) -> None:
    ids = await _ids(rest, 3)
    files = [NewFile(title=f"doc {n}", path_on_client=f"doc{n}.pdf", data=b"%PDF-1.7 " + bytes([n]) * 100,
                     first_publish_location_id=rid, transaction_id=f"tx-batch-{n}") for n, rid in enumerate(ids)]
    on_disk = tmp_path / "doc2.pdf"  # the worker's way: the file is read while the body is built
    on_disk.write_bytes(files[2].content())
    files[2] = NewFile(title="doc 2", path_on_client="doc2.pdf", path=on_disk, first_publish_location_id=ids[2],
                       transaction_id="tx-batch-2")
    before = _calls(emulator)
    uploaded = await rest.insert_content_versions(files)
    assert _calls(emulator) - before == 1 and all(r.success for r in uploaded), uploaded
    versions = [r.id for r in uploaded]

    audit = [{"Opportunity__c": ids[0], "Transaction_Id__c": "tx-batch-0", "Event_Type__c": "uploaded",
              "Occurred_At__c": "2026-11-27T10:00:00.000Z", "Actor__c": "sfsign", "Detail__c": "test"}]
    items = [WriteBack("Opportunity", rid, {"Sign_Status__c": "Signed"}, file=SignedFile("https://x", version_id=cv))
             for rid, cv in zip(ids, versions, strict=True)]
    before = _calls(emulator)
    outcome = await write_back_many(rest, items, audit)
    assert _calls(emulator) - before == 1  # 3 lookups + 3 updates + audit in one composite
    assert outcome.audit_results == [True]
    for rid, cv, written in zip(ids, versions, outcome.records, strict=True):
        assert isinstance(written, Written) and written.document_id is not None
        document_id = written.document_id
        assert document_id.startswith("069")
        assert written.document_url == f"https://x/lightning/r/ContentDocument/{document_id}/view"
        row = (await rest.query(f"SELECT Signed_Document_Id__c, Signed_Document_Url__c, Sign_Status__c "
                                f"FROM Opportunity WHERE Id = '{rid}'"))[0]
        assert row["Signed_Document_Id__c"] == document_id and row["Sign_Status__c"] == "Signed"
        assert row["Signed_Document_Url__c"] == f"https://x/lightning/r/ContentDocument/{document_id}/view"
        data = await rest.download_version_data(cv)
        assert hashlib.md5(data, usedforsecurity=False).hexdigest() == (
            await rest.query(f"SELECT Checksum FROM ContentVersion WHERE Id = '{cv}'"))[0]["Checksum"]


async def test_a_few_files_write_back_in_one_call_and_a_bad_record_fails_alone(
    emulator: Emulator, rest: SalesforceRest
) -> None:
    ids = await _ids(rest, 6)
    uploaded = await rest.insert_content_versions([
        NewFile(title="d", path_on_client="d.pdf", data=b"%PDF-1.7 x", first_publish_location_id=rid,
                transaction_id=f"tx-large-{n}") for n, rid in enumerate(ids)
    ])
    items = [WriteBack("Opportunity", rid, {"Sign_Status__c": "Signed"}, file=SignedFile("u", version_id=r.id),
                       event=OutcomeEvent(f"tx-large-{n}", "done", "2026-11-27T10:00:00.000Z"))
             for n, (rid, r) in enumerate(zip(ids, uploaded, strict=True))]
    items.append(WriteBack("Opportunity", ids[0], {"Sign_Status__c": "Not a picklist value"}))
    before = _calls(emulator)
    outcome = await write_back_many(rest, items)
    assert _calls(emulator) - before == 1  # six rows read by id and one collections PATCH, in one composite
    good = outcome.records[:6]
    assert all(isinstance(w, Written) and (w.document_id or "").startswith("069") for w in good), outcome.records
    for w in good:  # in a batch of several, each outcome event is built with its 069 and left to the relay
        assert isinstance(w, Written) and w.event is not None
        assert (w.event.detail, w.event.sent) == (f"Signed; file {w.document_id}", False)
    assert await _events(rest, "tx-large-0") == []
    bad = outcome.records[6]
    assert not isinstance(bad, Written) and bad.error_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"


async def test_a_file_not_found_fails_its_record_alone_and_writes_no_other_record_wrongly(
    emulator: Emulator, rest: SalesforceRest
) -> None:
    first, second = await _ids(rest, 2)
    [version] = await rest.insert_content_versions([NewFile(
        title="d", path_on_client="d.pdf", data=b"%PDF-1.7 found", first_publish_location_id=first,
        transaction_id="tx-found")])
    missing = to18("068Zz0000000001")  # well formed, but no such version
    items = [WriteBack("Opportunity", first, {"Sign_Status__c": "Signed"}, file=SignedFile("u", version_id=version.id)),
             WriteBack("Opportunity", second, {"Sign_Status__c": "Signed"}, file=SignedFile("u", version_id=missing))]
    before = _calls(emulator)
    outcome = await write_back_many(rest, items)
    # The one composite wrote nothing (its PATCH referenced a row not found); the two-call way then did.
    assert _calls(emulator) - before == 3
    found, lost = outcome.records
    assert isinstance(found, Written) and (found.document_id or "").startswith("069")
    assert not isinstance(lost, Written) and lost.error_code == "NOT_FOUND"
    rows = {r["Id"]: r for r in await rest.query(
        f"SELECT Id, Sign_Status__c, Signed_Document_Id__c FROM Opportunity WHERE Id IN ('{first}', '{second}')")}
    assert rows[first]["Signed_Document_Id__c"] == found.document_id and rows[first]["Sign_Status__c"] == "Signed"
    assert rows[second]["Signed_Document_Id__c"] is None


async def test_a_write_back_of_more_than_23_files_is_two_calls(emulator: Emulator, rest: SalesforceRest) -> None:
    ids = await _ids(rest, 24)
    ids = (ids * 24)[:24]  # each record is written once per file, in order
    uploaded = await rest.insert_content_versions([
        NewFile(title="d", path_on_client="d.pdf", data=b"%PDF-1.7 many", first_publish_location_id=rid,
                transaction_id=f"tx-many-{n}") for n, rid in enumerate(ids)])
    items = [WriteBack("Opportunity", rid, {"Sign_Status__c": "Signed"}, file=SignedFile("u", version_id=r.id))
             for rid, r in zip(ids, uploaded, strict=True)]
    before = _calls(emulator)
    outcome = await write_back_many(rest, items)
    assert _calls(emulator) - before == 2  # one lookup call, one composite of collections
    assert all(isinstance(w, Written) and (w.document_id or "").startswith("069") for w in outcome.records)
    assert len({w.document_id for w in outcome.records if isinstance(w, Written)}) == 24


async def test_a_thousand_audit_events_cost_one_call(emulator: Emulator, rest: SalesforceRest) -> None:
    [opp] = await _ids(rest, 1)
    events = [{"Opportunity__c": opp, "Transaction_Id__c": f"tx-audit-{n}", "Event_Type__c": "queued",
               "Occurred_At__c": "2026-11-27T10:00:00.000Z", "Actor__c": "sfsign"} for n in range(1000)]
    events[500]["Event_Type__c"] = "not-a-state"  # one bad row fails alone
    before = _calls(emulator)
    results = await rest.create_records("Signature_Event__c", events)
    assert _calls(emulator) - before == 1
    assert [r.success for r in results].count(False) == 1 and not results[500].success
    assert results[500].error is not None and results[500].error.error_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    ids = await rest.query(f"SELECT Id FROM Signature_Event__c WHERE Opportunity__c = '{opp}'")
    assert len(ids) == 999


OCCURRED = "2026-11-27T10:00:00.000Z"


def _event(opp: str, tx: str, kind: str, detail: str) -> dict[str, str]:
    """A pending audit row as the outbox's relay sends it."""
    return {"Opportunity__c": opp, "Transaction_Id__c": tx, "Event_Type__c": kind,
            "Occurred_At__c": "2026-11-27T10:00:00.000Z", "Actor__c": "sfsign", "Detail__c": detail}


async def _events(rest: SalesforceRest, tx: str) -> list[dict[str, str]]:
    rows = await rest.query(f"SELECT Event_Type__c, Detail__c FROM Signature_Event__c WHERE Transaction_Id__c = '{tx}' "
                            "ORDER BY Event_Type__c")
    return [{"Event_Type__c": r["Event_Type__c"], "Detail__c": r["Detail__c"]} for r in rows]


async def test_a_lone_write_back_carries_its_outcome_event_in_the_same_call(
    emulator: Emulator, rest: SalesforceRest
) -> None:
    [opp] = await _ids(rest, 1)
    [version] = await rest.insert_content_versions([NewFile(
        title="d", path_on_client="d.pdf", data=b"%PDF-1.7 lone", first_publish_location_id=opp,
        transaction_id="tx-lone")])
    item = WriteBack("Opportunity", opp, {"Sign_Status__c": "Signed"}, file=SignedFile("u", version_id=version.id),
                     event=OutcomeEvent("tx-lone", "done", OCCURRED, "upgrade to B-LTA pending"))
    before = _calls(emulator)
    outcome = await write_back_many(rest, [item], [_event(opp, "tx-lone", "uploaded", "pending row")])
    assert _calls(emulator) - before == 1
    [written] = outcome.records
    assert isinstance(written, Written) and (written.document_id or "").startswith("069")
    detail = f"Signed; file {written.document_id}; upgrade to B-LTA pending"
    assert written.event is not None and (written.event.detail, written.event.occurred_at, written.event.sent) == (
        detail, OCCURRED, True)
    assert written.document_url == f"u/lightning/r/ContentDocument/{written.document_id}/view"
    assert outcome.audit_results == [True]
    assert await _events(rest, "tx-lone") == [  # the event as sent is the event as returned
        {"Event_Type__c": "done", "Detail__c": detail},
        {"Event_Type__c": "uploaded", "Detail__c": "pending row"},
    ]


async def test_a_failed_lone_write_back_inserts_no_event_and_reports_its_own_error(
    emulator: Emulator, rest: SalesforceRest
) -> None:
    [opp] = await _ids(rest, 1)
    item = WriteBack("Opportunity", opp, {"Sign_Status__c": "Not a picklist value"},
                     event=OutcomeEvent("tx-fails", "done", OCCURRED, "Signed"))
    outcome = await write_back_many(rest, [item], [_event(opp, "tx-fails", "uploaded", "pending row")])
    [error] = outcome.records
    assert not isinstance(error, Written)  # no outcome, so no event to record as sent
    assert error.error_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"  # the cause, not PROCESSING_HALTED
    assert [r is True for r in outcome.audit_results] == [False]  # rolled back: still pending
    assert await _events(rest, "tx-fails") == []


async def test_audit_events_that_stop_the_transaction_do_not_stop_the_write_back(
    emulator: Emulator, rest: SalesforceRest
) -> None:
    [opp] = await _ids(rest, 1)
    emulator.org.faults.add_error("/services/data/v68.0/composite/sobjects", status=400, error_code="INVALID_TYPE",
                                  message="sObject type 'Signature_Event__c' is not supported.", method="POST",
                                  count=1)
    item = WriteBack("Opportunity", opp, {"Sign_Status__c": "Signed"},
                     event=OutcomeEvent("tx-audit-down", "done", OCCURRED, "Signed"))
    before = _calls(emulator)
    outcome = await write_back_many(rest, [item], [_event(opp, "tx-audit-down", "uploaded", "pending row")])
    assert _calls(emulator) - before == 2  # the all-or-none attempt, then the record alone
    # The record is written; its event comes back unsent, for the relay to send later.
    assert outcome.records == [Written(event=WrittenEvent("done", OCCURRED, "Signed", sent=False))]
    assert outcome.audit_results == []
    assert (await rest.query(f"SELECT Sign_Status__c FROM Opportunity WHERE Id = '{opp}'"))[0]["Sign_Status__c"] == (
        "Signed")
    assert await _events(rest, "tx-audit-down") == []
