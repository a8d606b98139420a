"""Replay positions of both transports in the outbox: CometD's integers, Pub/Sub's opaque bytes, one row
per channel, written by whichever transport delivered the channel's last committed event."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sfsign.outbox import NewJob, Outbox, OutboxStore
from sfsign.salesforce.stream_replay import ReplayBook

CDC = "/data/OpportunityChangeEvent"
PUBSUB_ID = bytes.fromhex("0000000000001234")  # leading zeros: opaque bytes, never a number


def _job(tx: str = "tx-1") -> NewJob:
    return NewJob(transaction_id=tx, rule="r", sobject="Opportunity", record_id="006000000000001AAA", source="cdc")


def test_a_pubsub_replay_id_is_stored_as_the_bytes_it_was(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    store = OutboxStore(path)
    store.commit_event(CDC, PUBSUB_ID, [_job()])
    store.close()
    reopened = OutboxStore(path)
    assert reopened.replay_id(CDC) == PUBSUB_ID
    job = reopened.by_transaction("tx-1")
    assert job is not None and job.replay_id == "0x0000000000001234"  # for people: hex, zeros kept
    parked = reopened.park_event("/event/Sign_Request__e", b"\x00\x01", {"data": {"event": {"replayId": b"\x00\x01"}}},
                                 "malformed: test", 1)
    assert parked.replay_id == "0x0001" and '"0x0001"' in parked.payload
    assert reopened.replay_ids() == {CDC: PUBSUB_ID, "/event/Sign_Request__e": b"\x00\x01"}


def test_a_commit_of_the_other_transport_replaces_the_channels_position(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event(CDC, 41, [])
    assert store.replay_id(CDC) == 41
    store.commit_event(CDC, PUBSUB_ID, [])
    assert store.replay_id(CDC) == PUBSUB_ID
    store.advance_replay_ids({CDC: 40})  # a CometD position replaces Pub/Sub's, never compared with it
    assert store.replay_id(CDC) == 40
    store.advance_replay_ids({CDC: 39})  # …while CometD's own never move back
    assert store.replay_id(CDC) == 40
    store.advance_replay_ids({CDC: b"\x07"})
    assert store.replay_id(CDC) == b"\x07"
    rows = store.db.execute("SELECT transport, replay_id, pubsub_replay_id FROM replay").fetchall()
    assert rows == [("pubsub", None, b"\x07")]


def test_an_outbox_of_an_older_version_keeps_its_cometd_positions(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    old = sqlite3.connect(path)  # the replay table as every version before Pub/Sub wrote it
    old.execute("CREATE TABLE replay (channel TEXT PRIMARY KEY, replay_id INTEGER, updated_at FLOAT)")
    old.execute("INSERT INTO replay VALUES (?, 6421, 0)", (CDC,))
    old.commit()
    old.close()
    store = OutboxStore(path)
    assert store.replay_id(CDC) == 6421
    assert store.db.execute("SELECT transport FROM replay").fetchall() == [("cometd",)]


def test_each_transport_resumes_only_from_its_own_kind_of_position() -> None:
    positions: dict[str, int | bytes] = {CDC: PUBSUB_ID}
    book = ReplayBook(positions.get, replay_all=())
    assert book.stored(CDC) is None and book.start_for(CDC) == -1  # CometD never sends Pub/Sub's bytes
    positions[CDC] = 12
    assert book.stored(CDC) == 12 and book.start_for(CDC) == 12


async def test_the_async_outbox_caches_either_kind(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.open()
    try:
        await outbox.commit_event(CDC, 12, [_job()])
        await outbox.advance_replay_ids({CDC: PUBSUB_ID})
        assert outbox.committed_replay_id(CDC) == PUBSUB_ID
        await outbox.pass_event(CDC, b"\x09")
        await outbox.commit_event(CDC, b"\x0a", [])
        assert outbox.committed_replay_id(CDC) == b"\x0a"
    finally:
        await outbox.close()
    reopened = OutboxStore(tmp_path / "o.sqlite")
    assert reopened.replay_id(CDC) == b"\x0a"  # the waiting older position was dropped by the later commit
