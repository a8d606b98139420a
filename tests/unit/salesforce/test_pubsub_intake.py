"""Intake on the Pub/Sub transport: a CDC event decoded from Avro fires the rule, its job and its opaque replay id
commit together in a real outbox, and the next subscription resumes after that replay id."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from fake_pubsub import FakePubSub, start, tls_files
from pubsub_schemas import HEADER_SCHEMA, encode, header
from sf_fakes import FakeAuth

from sfsign.config import load_rules
from sfsign.intake import Health, Intake
from sfsign.ops.metrics import Metrics
from sfsign.outbox import Outbox
from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.salesforce.pubsub_client import PubSubStream

REPO = Path(__file__).resolve().parents[3]
CDC = "/data/OpportunityChangeEvent"
OPPORTUNITY_CDC: dict[str, Any] = {
    "type": "record", "name": "OpportunityChangeEvent", "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "ChangeEventHeader", "type": HEADER_SCHEMA, "doc": "Data:ChangeEventHeader"},
        {"name": "Name", "type": ["null", "string"], "doc": "Data:Text", "default": None},
        {"name": "StageName", "type": ["null", "string"], "doc": "Data:Picklist", "default": None},
        {"name": "Amount", "type": ["null", "double"], "doc": "Data:Currency", "default": None},
        {"name": "LastModifiedDate", "type": ["null", "long"], "doc": "LastModifiedDate:DateTime", "default": None},
    ],
}


class FakeReconciler:
    def __init__(self) -> None:
        self.requested: list[list[str]] = []

    async def request(self, sobjects: list[str]) -> None:
        self.requested.append(sobjects)


def stage_change(stage: str) -> bytes:
    head = header("UPDATE", changed=["0x14"], record_id="006000000000001AAA")  # StageName (2), LastModifiedDate (4)
    head["entityName"] = "Opportunity"
    record = {"ChangeEventHeader": head, "Name": None, "StageName": stage, "Amount": None,
              "LastModifiedDate": 1712693965000}
    return encode(OPPORTUNITY_CDC, record)


async def test_a_pubsub_event_and_its_replay_id_commit_together_with_a_fake_pubsub_server_and_a_fake_reconciler(
    tmp_path: Path,
) -> None:
    ca, key, cert = tls_files(tmp_path)
    fake = FakePubSub({"opp": OPPORTUNITY_CDC}, {CDC: "opp"})
    server, port = await start(fake, key, cert)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    try:
        await outbox.commit_event(CDC, 6421, [])  # CometD's position, before the switch to Pub/Sub
        await outbox.mark_first_subscribed()
        rules = load_rules(REPO / "config" / "rules.yaml")

        async def run_intake(stop: asyncio.Event, reconciler: FakeReconciler, publish: bool) -> PubSubStream:
            stream = PubSubStream(FakeAuth(), channels=[CDC], replay_source=outbox.committed_replay_id,
                                  target=f"localhost:{port}", ca_bundle=ca)
            intake = Intake(outbox, object(), stream, rules=lambda: rules, org_id="00D000000000001AAA",  # type: ignore[arg-type]
                            reconciler=reconciler, wake=lambda: None, health=Health(), metrics=Metrics(),  # type: ignore[arg-type]
                            ready=asyncio.Event(), max_attempts=3, stop=stop)
            task = asyncio.create_task(intake.run())
            before = len(fake.streams)
            try:
                for _ in range(1000):  # poll: a new subscription, then (first run) an event committed
                    if len(fake.streams) > before and publish and not fake.bus[CDC]:
                        await fake.publish(CDC, "opp", stage_change("Proposal/Price Quote"))
                    if len(fake.streams) > before and isinstance(outbox.committed_replay_id(CDC), bytes):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("intake never committed a Pub/Sub event")
                return stream
            finally:
                stop.set()
                await stream.aclose()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        first = FakeReconciler()
        await run_intake(asyncio.Event(), first, publish=True)
        assert first.requested == [["Opportunity"]]  # the CometD position is none for Pub/Sub: reconciled
        assert fake.streams[0].requests[0].replay_preset == pb.LATEST
        delivered = fake.bus[CDC][0].replay_id
        assert outbox.committed_replay_id(CDC) == delivered
        jobs = await outbox.jobs()
        assert [(j.sobject, j.record_id, j.rule, j.replay_id) for j in jobs] == [
            ("Opportunity", "006000000000001AAA", "opportunity-proposal", f"0x{delivered.hex()}")]

        second = FakeReconciler()
        await run_intake(asyncio.Event(), second, publish=False)  # a restart: resumes after the committed replay id
        assert second.requested == []
        assert fake.streams[-1].requests[0].replay_preset == pb.CUSTOM
        assert fake.streams[-1].requests[0].replay_id == delivered
    finally:
        await outbox.close()
        await server.stop(grace=None)
