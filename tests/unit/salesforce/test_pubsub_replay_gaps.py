"""A Pub/Sub channel started again from LATEST after an earlier subscription is a gap for intake to
reconcile, as CometD's resubscription from -1 is; a resumption from a committed replay id is not."""

from __future__ import annotations

from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.salesforce.pubsub_replay import PubSubReplayBook

CDC = "/data/OpportunityChangeEvent"


def test_a_second_start_from_latest_is_a_gap_reported_once() -> None:
    committed: dict[str, bytes] = {}
    book = PubSubReplayBook(committed.get, replay_all=())
    preset, rid = book.start_for(CDC)
    book.started(CDC, preset, rid)
    assert preset == pb.LATEST and book.take_gaps() == []  # a first start: the start-up reconciliation's job
    book.started(CDC, *book.start_for(CDC))  # the stream was lost before anything was committed
    assert book.take_gaps() == [CDC]
    assert book.take_gaps() == []


def test_a_resumption_from_a_committed_replay_id_is_no_gap() -> None:
    committed: dict[str, bytes] = {}
    book = PubSubReplayBook(committed.get, replay_all=())
    book.started(CDC, *book.start_for(CDC))
    committed[CDC] = b"\x00" * 7 + b"\x05\x00\x00"
    preset, rid = book.start_for(CDC)
    book.started(CDC, preset, rid)
    assert preset == pb.CUSTOM and book.take_gaps() == []
