"""The control API, fault injection, restarts with state, the thread wrapper and `serve`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sfsign.emulator.server import Emulator, EmulatorThread

TOKEN_URL = "/services/oauth2/token"


def _password_form(emulator: Emulator) -> dict[str, str]:
    login = emulator.login
    return {"grant_type": "password", "client_id": login.consumer_key,
            "client_secret": login.consumer_secret.get_secret_value(), "username": login.username,
            "password": login.password.get_secret_value() + login.security_token.get_secret_value()}


@pytest.mark.parametrize("headers", [{}, {"X-Control-Token": "wrong"}])
async def test_control_api_requires_the_control_token(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await http.get("/_control/api-usage", headers=headers)
    assert response.status_code == 403


async def test_records_create_read_update(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    created = await ctl.post("/_control/records/Account", {"fields": {"Name": "Control Co"}})
    assert created["success"] is True
    await ctl.update("Account", created["id"], {"BillingCity": "Hamburg"}, user=emulator.rep_username)
    record = await ctl.get(f"/_control/records/Account/{created['id']}")
    assert record["Name"] == "Control Co" and record["BillingCity"] == "Hamburg"
    assert record["attributes"]["type"] == "Account"
    rep = emulator.org.store.user_by_username(str(emulator.rep_username))
    assert rep is not None and record["LastModifiedById"] == rep["Id"]


async def test_record_errors_are_salesforce_errors(emulator: Emulator, http: httpx.AsyncClient) -> None:
    response = await http.post("/_control/records/Account", json={"fields": {"Nope__c": 1}},
                               headers={"X-Control-Token": emulator.control_token})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_FIELD"
    unknown_user = await http.post("/_control/records/Account", json={"user": "ghost@x", "fields": {}},
                                   headers={"X-Control-Token": emulator.control_token})
    assert unknown_user.status_code == 404


async def test_api_usage_counts_rest_calls_and_the_limit_is_enforced(
    emulator: Emulator, ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    before = (await ctl.get("/_control/api-usage"))["used"]
    response = await http.get("/services/data/v68.0/limits/", headers=headers)
    assert response.status_code == 200, response.text
    usage = await ctl.get("/_control/api-usage")
    assert usage["used"] == before + 1
    assert usage["limitInfo"] == f"api-usage={before + 1}/15000"
    await ctl.post("/_control/api-usage", {"used": 5, "max": 5})
    refused = await http.get("/services/data/v68.0/limits/", headers=headers)
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=5/5"


async def test_files_lists_uploaded_versions_with_links_and_hashes(
    emulator: Emulator, ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    opp = await ctl.an_opportunity()
    pdf = b"%PDF-1.7 control test"
    response = await http.post(
        "/services/data/v68.0/sobjects/ContentVersion/",
        json={"Title": "Contract", "PathOnClient": "contract.pdf", "FirstPublishLocationId": opp,
              "VersionData": base64.b64encode(pdf).decode()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    files = (await ctl.get("/_control/files"))["files"]
    [entry] = [f for f in files if f["Id"] == response.json()["id"]]
    assert entry["sha256"] == hashlib.sha256(pdf).hexdigest() and entry["size"] == len(pdf)
    assert entry["ContentDocumentId"].startswith("069")
    assert opp in [link["LinkedEntityId"] for link in entry["links"]]


async def test_error_fault_answers_then_expires(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    fault = await ctl.post("/_control/faults/errors", {"prefix": "/services/oauth2/token", "count": 1,
                                                       "status": 503, "errorCode": "unavailable",
                                                       "message": "try later"})
    first = await http.post(TOKEN_URL, data=_password_form(emulator))
    assert first.status_code == 503
    assert first.json() == {"error": "unavailable", "error_description": "try later"}
    second = await http.post(TOKEN_URL, data=_password_form(emulator))
    assert second.status_code == 200
    listed = await ctl.get("/_control/faults")
    assert [f["hits"] for f in listed["errors"] if f["id"] == fault["id"]] == [1]


async def test_rest_error_fault_uses_the_rest_body_and_limit_header(
    ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    await ctl.post("/_control/faults/errors", {"prefix": "/services/data/v68.0/query", "status": 403,
                                               "errorCode": "REQUEST_LIMIT_EXCEEDED",
                                               "message": "TotalRequests Limit exceeded."})
    response = await http.get("/services/data/v68.0/query/", params={"q": "SELECT Id FROM Account"},
                              headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")


async def test_rate_fault_with_rate_zero_never_fires(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    await ctl.post("/_control/faults/errors", {"prefix": "/services/oauth2/", "rate": 0.0})
    assert (await http.post(TOKEN_URL, data=_password_form(emulator))).status_code == 200
    bad = await http.post("/_control/faults/errors", json={"prefix": "/", "rate": 2},
                          headers={"X-Control-Token": emulator.control_token})
    assert bad.status_code == 400


async def test_abort_after_applies_the_request_and_drops_the_answer(
    emulator: Emulator, ctl: Any, http: httpx.AsyncClient
) -> None:
    await ctl.post("/_control/faults/errors", {"prefix": "/services/oauth2/token", "count": 1,
                                               "mode": "abort_after"})
    sessions = len(emulator.org.sessions)
    with pytest.raises(httpx.TransportError):
        await http.post(TOKEN_URL, data=_password_form(emulator))
    assert len(emulator.org.sessions) == sessions + 1  # the login happened, the client never heard


async def test_abort_before_drops_without_effect(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    await ctl.post("/_control/faults/errors", {"prefix": "/services/oauth2/token", "count": 1,
                                               "mode": "abort_before"})
    sessions = len(emulator.org.sessions)
    with pytest.raises(httpx.TransportError):
        await http.post(TOKEN_URL, data=_password_form(emulator))
    assert len(emulator.org.sessions) == sessions


async def test_latency_fault_is_listed_and_removable(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    fault = await ctl.post("/_control/faults/latency", {"prefix": "/services/oauth2/", "ms": 50})
    assert (await http.post(TOKEN_URL, data=_password_form(emulator))).status_code == 200
    assert [f["id"] for f in (await ctl.get("/_control/faults"))["latencies"]] == [fault["id"]]
    removed = await http.delete(f"/_control/faults/{fault['id']}",
                                headers={"X-Control-Token": emulator.control_token})
    assert removed.status_code == 200
    assert (await ctl.get("/_control/faults"))["latencies"] == []


async def test_restart_keeps_records_tokens_and_retained_events_but_not_bayeux_clients(
    emulator: Emulator, ctl: Any, http: httpx.AsyncClient, token: str, bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start(("/data/OpportunityChangeEvent", -1))
    await ctl.touch(opp, 42)
    stored = emulator.org.bus.last_replay_id
    org_id, consumer_key, url = emulator.org.org_id, emulator.login.consumer_key, emulator.url
    await emulator.restart()
    assert (emulator.org.org_id, emulator.login.consumer_key, emulator.url) == (org_id, consumer_key, url)
    record = await ctl.get(f"/_control/records/Opportunity/{opp}")
    assert record["Description"] == "touch 42"
    [reply] = await bayeux.send(bayeux.connect_msg())
    assert reply["error"] == "403::Unknown client"
    await bayeux.handshake()  # the old token is still valid after the restart
    await bayeux.connect()
    sub = await bayeux.subscribe("/data/OpportunityChangeEvent", -2)
    assert sub["successful"] is True
    _, replayed = await bayeux.connect()
    assert replayed[-1]["data"]["event"]["replayId"] == stored


async def test_state_file_carries_the_org_to_a_new_emulator(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    async with Emulator(data_dir=tmp_path / "d", state_file=state) as first:
        org_id, key = first.org.org_id, first.login.consumer_key
        async with httpx.AsyncClient(base_url=first.url, verify=first.tls.client_context()) as http:
            response = await http.post(TOKEN_URL, data=_password_form(first))
            token = response.json()["access_token"]
    assert state.stat().st_mode & 0o777 == 0o600
    async with Emulator(data_dir=tmp_path / "d", state_file=state) as second:
        assert (second.org.org_id, second.login.consumer_key) == (org_id, key)
        assert second.org.session_for_token(token) is not None


def test_emulator_thread_serves_synchronous_clients(tmp_path: Path) -> None:
    with EmulatorThread(data_dir=tmp_path / "t", long_poll_timeout_ms=500) as emu:
        with httpx.Client(base_url=emu.url, verify=emu.emulator.tls.client_context()) as http:
            response = http.post(TOKEN_URL, data=_password_form(emu.emulator))
            assert response.status_code == 200, response.text
            emu.restart()
            usage = http.get("/_control/api-usage", headers={"X-Control-Token": emu.control_token})
            assert usage.status_code == 200
    assert emu.loop_errors == []


def test_serve_prints_details_and_writes_them_to_a_private_json_file(tmp_path: Path) -> None:
    out = tmp_path / "emulator.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfsign.emulator", "serve", "--data-dir", str(tmp_path / "data"),
         "--json-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out.exists(), proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
        details = json.loads(out.read_text())
        assert out.stat().st_mode & 0o777 == 0o600
        assert details["url"].startswith("https://localhost:")
        ctx = ssl.create_default_context(cafile=details["ca_file"])
        with httpx.Client(base_url=details["url"], verify=ctx) as http:
            response = http.post(TOKEN_URL, data={
                "grant_type": "client_credentials", "client_id": details["consumer_key"],
                "client_secret": details["consumer_secret"]})
            assert response.status_code == 200, response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert details["url"] in stdout and details["consumer_key"] in stdout
    assert details["pubsub_target"].startswith("localhost:") and details["pubsub_target"] in stdout
    assert details["consumer_secret"] not in stdout and details["control_token"] not in stdout
    assert details["security_token"] not in stdout
    assert Path(details["private_key_file"]).stat().st_mode & 0o777 == 0o600
    assert os.path.commonpath([details["private_key_file"], str(tmp_path)]) == str(tmp_path)


async def test_held_long_polls_do_not_block_stop(tmp_path: Path) -> None:
    emu = Emulator(data_dir=tmp_path / "s", long_poll_timeout_ms=60000)
    await emu.start()
    async with httpx.AsyncClient(base_url=emu.url, verify=emu.tls.client_context()) as http:
        token = (await http.post(TOKEN_URL, data=_password_form(emu))).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        [hs] = (await http.post("/cometd/68.0", json=[{"channel": "/meta/handshake", "version": "1.0"}],
                                headers=headers)).json()
        connect = {"channel": "/meta/connect", "clientId": hs["clientId"], "connectionType": "long-polling"}
        await http.post("/cometd/68.0", json=[connect], headers=headers)
        poll = asyncio.create_task(http.post("/cometd/68.0", json=[connect], headers=headers, timeout=120))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(emu.stop(), 10)
        with pytest.raises(httpx.TransportError):
            await poll


async def test_bulk_insert_creates_every_record_in_one_call(emulator: Emulator, ctl: Any) -> None:
    created = await ctl.post("/_control/bulk/Account", {"records": [{"Name": f"Bulk {i}"} for i in range(3)]})
    assert created["success"] is True and len(created["ids"]) == 3
    rows = await ctl.query("SELECT Id, Name FROM Account WHERE Name LIKE 'Bulk %' ORDER BY Name")
    assert [r["Id"] for r in rows] == created["ids"]
    assert [r["Name"] for r in rows] == ["Bulk 0", "Bulk 1", "Bulk 2"]


async def test_bulk_update_is_one_transaction_on_the_cdc_channel(
    emulator: Emulator, ctl: Any, http: httpx.AsyncClient
) -> None:
    opps = [r["Id"] for r in await ctl.query("SELECT Id FROM Opportunity WHERE IsClosed = false LIMIT 3")]
    assert len(opps) == 3
    channel = "/data/OpportunityChangeEvent"
    before = (await ctl.get(f"/_control/streaming/events?channel={channel}"))["lastReplayId"]
    response = await http.patch("/_control/bulk/Opportunity", headers=ctl.headers, json={
        "user": emulator.rep_username, "records": [{"Id": o, "Description": "mass edit"} for o in opps]})
    assert response.status_code == 200, response.text
    events = [e for e in (await ctl.get(f"/_control/streaming/events?channel={channel}"))["events"]
              if e["replayId"] > before]
    headers = [e["data"]["payload"]["ChangeEventHeader"] for e in events]
    assert sorted(rid for h in headers for rid in h["recordIds"]) == sorted(opps)
    assert {h["transactionKey"] for h in headers} == {headers[0]["transactionKey"]}
    assert {h["commitTimestamp"] for h in headers} == {headers[0]["commitTimestamp"]}
    assert all(h["changeType"] == "UPDATE" and "Description" in h["changedFields"] for h in headers)


async def test_bulk_update_is_all_or_nothing(emulator: Emulator, ctl: Any, http: httpx.AsyncClient) -> None:
    opp = await ctl.an_opportunity()
    response = await http.patch("/_control/bulk/Opportunity", headers=ctl.headers, json={
        "user": emulator.rep_username,
        "records": [{"Id": opp, "Description": "never committed"}, {"Id": opp, "Nope__c": 1}]})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_FIELD"
    record = await ctl.get(f"/_control/records/Opportunity/{opp}?fields=Description")
    assert record.get("Description") != "never committed"


@pytest.mark.parametrize("body", [{}, {"records": []}, {"records": [{"Description": "no id"}]}, {"records": ["x"]}])
async def test_bulk_update_refuses_malformed_bodies(emulator: Emulator, http: httpx.AsyncClient,
                                                    body: dict[str, Any]) -> None:
    response = await http.patch("/_control/bulk/Opportunity", json=body,
                                headers={"X-Control-Token": emulator.control_token})
    assert response.status_code == 400, response.text


async def test_control_client_bulk_calls(emulator: Emulator) -> None:
    from sfsign.emulator.control_client import ControlClient

    user = str(emulator.rep_username)
    async with ControlClient(emulator.url, emulator.control_token, emulator.ca_file) as client:
        ids = await client.bulk_create("Account", [{"Name": "Client Bulk A"}, {"Name": "Client Bulk B"}], user=user)
        await client.bulk_update("Account", ids, {"BillingCity": "Lyon"}, user=user)
        assert [(await client.get("Account", i, ["BillingCity"]))["BillingCity"] for i in ids] == ["Lyon", "Lyon"]
