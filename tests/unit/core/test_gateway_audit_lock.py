"""The write-back sends pending audit rows along only while the daemon's audit relay is not sending them:
both hold one lock, which the daemon may hand to the worker. Real outbox, fake REST client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sfsign.outbox import AuditEvent, Outbox
from sfsign.salesforce.composite import CompositeResult
from sfsign.salesforce.writeback import WriteBack
from sfsign.worker import Worker, WorkerConfig


class FakeRest:
    """Answers `/composite` as Salesforce would and remembers each call's subrequests."""

    api_version = "68.0"

    def __init__(self) -> None:
        self.calls: list[list[Mapping[str, Any]]] = []

    def subrequest_url(self, path: str) -> str:
        return f"/services/data/v{self.api_version}/{path}"

    async def composite(self, subs: Sequence[Mapping[str, Any]], *, all_or_none: bool,
                        write: bool = True) -> list[CompositeResult]:
        self.calls.append(list(subs))
        out = []
        for sub in subs:
            records = (sub.get("body") or {}).get("records")
            ok = {"id": "a00000000000001AAA", "success": True, "errors": []}
            out.append(CompositeResult(sub["referenceId"], 200, [ok] * len(records)) if records is not None
                       else CompositeResult(sub["referenceId"], 204, None))
        return out


async def test_the_write_back_leaves_audit_rows_to_the_holder_of_the_lock_the_daemon_hands_in_with_fake_rest(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    rest = FakeRest()
    worker = Worker(outbox=outbox, rest=rest, rules=Any, cpu_pool=Any,  # type: ignore[arg-type]
                    config=WorkerConfig(artifacts_dir=tmp_path / "artifacts"),
                    instance_url=lambda: "https://example.my.salesforce.com")
    await outbox.commit_event(None, None, [], [AuditEvent(
        transaction_id="tx-1", sobject="Opportunity", record_id="006000000000001AAA", event_type="retried",
        actor="sfsign", detail="a row waiting for Salesforce")])
    relay_lock = asyncio.Lock()
    worker.audit_lock = relay_lock  # as the daemon does: its audit relay owns the lock
    write = WriteBack("Opportunity", "006000000000001AAA", {"Sign_Status__c": "Pending"})
    try:
        async with relay_lock:  # the relay is sending the rows right now
            await worker.gateway.write_now([write])
        await worker.gateway.write_now([write])
        waiting = await outbox.call(lambda s: s.pending_audit())
    finally:
        await outbox.close()
    audit = [[s for s in call if s["referenceId"] == "audit"] for call in rest.calls]
    assert [len(a) for a in audit] == [0, 1]  # left to the relay while it held the lock, then sent along
    assert waiting == []
