"""`Outbox`: the async face of `OutboxStore`. Every call runs on one dedicated thread, so SQLite sees a
single writer and the event loop never waits on disk.

Every public store operation has a typed twin here (a test holds them to it), so async code never needs to
hold the store; `call` remains for code that still passes a function of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from sfsign.outbox.envelope_face import EnvelopeFace, no_wake
from sfsign.outbox.group_commit import GroupCommit, Outcome, run_together
from sfsign.outbox.models import (
    AuditEvent,
    CommitResult,
    Job,
    JobState,
    NewJob,
    OutboxStats,
    ParkedEvent,
    PurgeResult,
    SignatureEvidence,
    SignedDocument,
    StepAudit,
    UpgradeEvidence,
)
from sfsign.outbox.store import OutboxStore
from sfsign.salesforce.events import ReplayId

T = TypeVar("T")
log = structlog.get_logger("sfsign.outbox")

#: How long the position of an event that asked for nothing may wait to be saved (see `Outbox.pass_event`).
REPLAY_SAVE_DELAY_S = 0.5


class Outbox(EnvelopeFace):
    """The async face of `OutboxStore`: every call runs on one dedicated thread (envelopes: `EnvelopeFace`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfsign-outbox")
        self._store: OutboxStore | None = None
        self._group: GroupCommit[OutboxStore] = GroupCommit(self._executor, self._together)
        self._replay: dict[str, ReplayId] = {}
        self._unsaved_replay: dict[str, ReplayId] = {}  # positions of events that asked for nothing (`pass_event`)
        self._replay_saver: asyncio.Task[None] | None = None
        self.wake = no_wake  # the daemon sets the worker's: a signature or an envelope's end may make a job due
        #: Called (on the loop) after a call that queued a mail: the mail loop's `wake` (sfsign.signing.postman).
        self.mail_hooks: list[Callable[[], None]] = []
        self._mails_seen = 0

    async def open(self) -> None:
        self._store = await self._run(lambda: OutboxStore(self.path))
        self._replay = await self.call(OutboxStore.replay_ids)

    async def close(self) -> None:
        if self._replay_saver is not None:
            self._replay_saver.cancel()
            await asyncio.gather(self._replay_saver, return_exceptions=True)
            self._replay_saver = None
        if self._store is not None and self._unsaved_replay:
            await self._save_unsaved_replay()
        if self._store is not None:
            store = self._store
            await self._run(store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    @property
    def store(self) -> OutboxStore:
        if self._store is None:
            raise RuntimeError("outbox is not open")
        return self._store

    def _together(self, calls: list[Callable[[OutboxStore], Any]]) -> list[Outcome]:
        store = self.store
        return run_together(store.db.conn, store, calls)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[OutboxStore], T]) -> T:
        """`fn(store)` on the outbox thread; calls made together share one hand-off and one transaction
        (`sfsign.outbox.group_commit`)."""
        store = self.store
        try:
            return await self._group.call(fn)
        finally:
            if store.mails_queued != self._mails_seen:  # committed: the next call runs after it on the one thread
                self._mails_seen = store.mails_queued
                for hook in self.mail_hooks:
                    hook()

    # ------------------------------------------------------------------------------------- intake

    def committed_replay_id(self, channel: str) -> ReplayId | None:
        """The last replay id committed for `channel` (cached; safe to call from the event loop): an int if
        CometD delivered the event, bytes if Pub/Sub did (each client resumes only from its own kind)."""
        return self._replay.get(channel)

    async def pass_event(self, channel: str | None, replay_id: ReplayId | None) -> None:
        """An event that asks for nothing (no job, no audit row, nothing to reconcile), such as the change
        event of sfsign's own write-back, which is two of every three events in a burst: its position is
        saved within `REPLAY_SAVE_DELAY_S` or by the channel's next commit, not in a transaction of its own.
        A crash in between replays such events, which again ask for nothing."""
        if channel is None or replay_id is None:
            return
        self._unsaved_replay[channel] = replay_id
        if self._replay_saver is None:
            self._replay_saver = asyncio.create_task(self._save_replay_later(), name="outbox-replay-saver")

    async def _save_replay_later(self) -> None:
        await asyncio.sleep(REPLAY_SAVE_DELAY_S)
        self._replay_saver = None
        try:
            await self._save_unsaved_replay()
        except Exception as exc:  # the outbox is busy or full: such events are replayed, and ask for nothing
            log.warning("could not save the replay position of events that asked for nothing",
                        error=f"{type(exc).__name__}: {exc}"[:300])

    async def _save_unsaved_replay(self) -> None:
        positions, self._unsaved_replay = self._unsaved_replay, {}
        if positions:
            await self.advance_replay_ids(positions)

    async def advance_replay_ids(self, positions: dict[str, ReplayId]) -> None:
        await self.call(lambda s: s.advance_replay_ids(dict(positions)))
        for channel, replay_id in positions.items():
            cached = self._replay.get(channel)
            if isinstance(replay_id, int) and isinstance(cached, int):
                self._replay[channel] = max(replay_id, cached)
            else:  # Pub/Sub's ids are opaque: the store kept this one (see `IntakeStore.advance_replay_ids`)
                self._replay[channel] = replay_id

    async def commit_event(
        self, channel: str | None, replay_id: ReplayId | None, jobs: Iterable[NewJob],
        audit: Iterable[AuditEvent] = (),
    ) -> CommitResult:
        jobs, events = list(jobs), list(audit)
        if channel is not None and replay_id is not None:
            self._unsaved_replay.pop(channel, None)  # this commit saves a later position of the channel
        result = await self.call(lambda s: s.commit_event(channel, replay_id, jobs, events))
        if channel is not None and replay_id is not None:
            self._replay[channel] = replay_id
        return result

    async def commit_unless_signed(
        self, channel: str | None, replay_id: ReplayId | None, jobs: Iterable[NewJob], audit: Iterable[AuditEvent],
        check: Iterable[NewJob],
    ) -> CommitResult | None:
        jobs, events, checked = list(jobs), list(audit), list(check)
        unsaved = self._unsaved_replay.pop(channel, None) if channel is not None and replay_id is not None else None
        result = await self.call(lambda s: s.commit_unless_signed(channel, replay_id, jobs, events, checked))
        if channel is not None and replay_id is not None:
            if result is not None:
                self._replay[channel] = replay_id
            elif unsaved is not None:
                self._unsaved_replay.setdefault(channel, unsaved)  # nothing committed: it is still to be saved
        return result

    async def park_event(
        self, channel: str, replay_id: ReplayId | None, message: Any, reason: str, attempts: int
    ) -> ParkedEvent:
        parked = await self.call(lambda s: s.park_event(channel, replay_id, message, reason, attempts))
        if replay_id is not None:
            self._replay[channel] = replay_id
        return parked

    async def reset_replay(self, channel: str) -> None:
        self._unsaved_replay.pop(channel, None)
        await self.call(lambda s: s.reset_replay(channel))
        self._replay.pop(channel, None)

    async def replay_id(self, channel: str) -> ReplayId | None:
        """The channel's committed replay id as stored (`committed_replay_id` answers from the cache)."""
        return await self.call(lambda s: s.replay_id(channel))

    async def replay_ids(self) -> dict[str, ReplayId]:
        return await self.call(OutboxStore.replay_ids)

    async def has_transaction(self, transaction_id: str) -> bool:
        return await self.call(lambda s: s.has_transaction(transaction_id))

    async def knows_transaction(self, transaction_id: str) -> bool:
        return await self.call(lambda s: s.knows_transaction(transaction_id))

    async def signed_job(self, sobject: str, record_id: str, rule: str) -> SignedDocument | None:
        return await self.call(lambda s: s.signed_job(sobject, record_id, rule))

    async def signed_unless_known(self, job: NewJob) -> SignedDocument | None:
        return await self.call(lambda s: s.signed_unless_known(job))

    async def records_with_jobs(self, sobject: str, rule: str, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        return await self.call(lambda s: s.records_with_jobs(sobject, rule, ids))

    async def add_archive_job(
        self, *, transaction_id: str, rule: str, sobject: str, record_id: str, content_document_id: str,
        content_version_id: str, source: str,
    ) -> bool:
        return await self.call(lambda s: s.add_archive_job(
            transaction_id=transaction_id, rule=rule, sobject=sobject, record_id=record_id,
            content_document_id=content_document_id, content_version_id=content_version_id, source=source))

    async def requeue(self, job_id: int) -> Job:
        return await self.call(lambda s: s.requeue(job_id))

    # ------------------------------------------------------------------------------- the worker's queue

    async def claim_due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        excluded = list(exclude)
        return await self.call(lambda s: s.claim_due(now, limit, excluded))

    async def next_due_at(self, exclude: Iterable[int] = ()) -> float | None:
        excluded = list(exclude)
        return await self.call(lambda s: s.next_due_at(excluded))

    async def waiting_unannounced(self, older_than: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        excluded = list(exclude)
        return await self.call(lambda s: s.waiting_unannounced(older_than, limit, excluded))

    async def mark_pending_shown(self, ids: list[int], at: float) -> None:
        await self.call(lambda s: s.mark_pending_shown(list(ids), at))

    # --------------------------------------------------------------------------------- job steps

    async def mark_fetched(self, job: Job, *, document_json: str, file_title: str, file_name: str,
                           signers_json: str | None = None) -> Job:
        return await self.call(lambda s: s.mark_fetched(
            job, document_json=document_json, file_title=file_title, file_name=file_name, signers_json=signers_json))

    async def redo_from_fetched(self, job: Job, *, drop_signature: bool = False) -> Job:
        return await self.call(lambda s: s.redo_from_fetched(job, drop_signature=drop_signature))

    async def mark_rendered(self, job: Job) -> Job:
        return await self.call(lambda s: s.mark_rendered(job))

    async def mark_signed(self, job: Job, evidence: SignatureEvidence, detail: str) -> Job:
        return await self.call(lambda s: s.mark_signed(job, evidence, detail))

    async def mark_rendered_and_signed(self, job: Job, evidence: SignatureEvidence, detail: str) -> Job:
        return await self.call(lambda s: s.mark_rendered_and_signed(job, evidence, detail))

    async def take_rule(self, job: Job, rule: str) -> Job:
        return await self.call(lambda s: s.take_rule(job, rule))

    async def set_upload_uncertain(self, job: Job, uncertain: bool) -> Job:
        return await self.call(lambda s: s.set_upload_uncertain(job, uncertain))

    async def mark_uploaded(self, job: Job, version_id: str) -> Job:
        return await self.call(lambda s: s.mark_uploaded(job, version_id))

    async def mark_upload_found(self, job: Job, version_id: str, document_id: str | None) -> Job:
        return await self.call(lambda s: s.mark_upload_found(job, version_id, document_id))

    async def mark_done(self, job: Job, audit: StepAudit, *, at: float | None = None, signed_visible: bool = False,
                        document_id: str | None = None) -> Job:
        return await self.call(lambda s: s.mark_done(job, audit, at=at, signed_visible=signed_visible,
                                                     document_id=document_id))

    async def mark_ltv_pending(self, job: Job, audit: StepAudit, *, visible_at: float, upgrade_at: float,
                               document_id: str | None = None) -> Job:
        return await self.call(lambda s: s.mark_ltv_pending(job, audit, visible_at=visible_at, upgrade_at=upgrade_at,
                                                            document_id=document_id))

    async def mark_adopted(self, job: Job, *, version_id: str, document_id: str | None, detail: str) -> Job:
        return await self.call(lambda s: s.mark_adopted(
            job, version_id=version_id, document_id=document_id, detail=detail))

    async def mark_skipped(self, job: Job, why: str) -> Job:
        return await self.call(lambda s: s.mark_skipped(job, why))

    async def defer(self, job: Job, until: float) -> Job:
        return await self.call(lambda s: s.defer(job, until))

    async def mark_ltv_upgraded(self, job: Job, evidence: UpgradeEvidence) -> Job:
        return await self.call(lambda s: s.mark_ltv_upgraded(job, evidence))

    async def redo_ltv_upgrade(self, job: Job) -> Job:
        return await self.call(lambda s: s.redo_ltv_upgrade(job))

    async def mark_ltv_uploaded(self, job: Job, version_id: str) -> Job:
        return await self.call(lambda s: s.mark_ltv_uploaded(job, version_id))

    async def mark_ltv_upload_found(self, job: Job, version_id: str) -> Job:
        return await self.call(lambda s: s.mark_ltv_upload_found(job, version_id))

    async def note_failure(self, job: Job, reason: str, code: str) -> Job:
        return await self.call(lambda s: s.note_failure(job, reason, code))

    async def schedule_retry(self, job: Job, due_at: float, reason: str, code: str, *, attempts: int,
                             failing_since: float) -> Job:
        return await self.call(lambda s: s.schedule_retry(
            job, due_at, reason, code, attempts=attempts, failing_since=failing_since))

    async def reset_retry_window(self, job: Job) -> Job:
        return await self.call(lambda s: s.reset_retry_window(job))

    async def mark_error(self, job: Job, reason: str, code: str) -> Job:
        return await self.call(lambda s: s.mark_error(job, reason, code))

    async def mark_dead(self, job: Job, *, attempts: int, message: str, reason: str, code: str) -> Job:
        return await self.call(lambda s: s.mark_dead(job, attempts=attempts, message=message, reason=reason,
                                                     code=code))

    # ------------------------------------------------------------------------------------ reads

    async def get(self, job_id: int) -> Job:
        return await self.call(lambda s: s.get(job_id))

    async def by_transaction(self, transaction_id: str) -> Job | None:
        return await self.call(lambda s: s.by_transaction(transaction_id))

    async def jobs(self, state: JobState | None = None, limit: int = 1000) -> list[Job]:
        return await self.call(lambda s: s.jobs(state, limit))

    async def counts(self) -> dict[str, int]:
        return await self.call(OutboxStore.counts)

    async def recent_jobs(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        return await self.call(lambda s: s.recent_jobs(state, limit))

    async def oldest_active(self) -> Job | None:
        return await self.call(OutboxStore.oldest_active)

    async def last_event(self) -> tuple[str, float] | None:
        return await self.call(OutboxStore.last_event)

    async def signed_visible_since(self, since: float) -> int:
        return await self.call(lambda s: s.signed_visible_since(since))

    async def parked_events(self, limit: int = 20) -> list[ParkedEvent]:
        return await self.call(lambda s: s.parked_events(limit))

    async def parked_count(self) -> int:
        return await self.call(OutboxStore.parked_count)

    async def stats(self, signed_since: float) -> OutboxStats:
        return await self.call(lambda s: s.stats(signed_since))

    async def job_states(self, transaction_ids: Iterable[str]) -> dict[str, tuple[JobState, float | None]]:
        ids = list(transaction_ids)
        return await self.call(lambda s: s.job_states(ids))

    async def purge(self, now: float, retention_s: float, *, dry_run: bool = False) -> PurgeResult:
        return await self.call(lambda s: s.purge(now, retention_s, dry_run=dry_run))

    # ------------------------------------------------------------------------------ the audit relay

    async def pending_audit(self, limit: int = 200, older_than: str | None = None) -> list[dict[str, Any]]:
        return await self.call(lambda s: s.pending_audit(limit, older_than))

    async def mark_audit(self, ids: list[int], status: str, error: str | None = None) -> None:
        await self.call(lambda s: s.mark_audit(list(ids), status, error))

    # -------------------------------------------------------------------------------------- meta

    async def get_meta(self, key: str) -> str | None:
        return await self.call(lambda s: s.get_meta(key))

    async def set_meta(self, key: str, value: str) -> None:
        await self.call(lambda s: s.set_meta(key, value))

    async def delete_meta(self, key: str) -> None:
        await self.call(lambda s: s.delete_meta(key))

    async def meta_with_prefix(self, prefix: str) -> list[str]:
        return await self.call(lambda s: s.meta_with_prefix(prefix))

    async def mark_first_subscribed(self, at: str | None = None) -> None:
        await self.call(lambda s: s.mark_first_subscribed(at))

    async def first_subscribed_at(self) -> str | None:
        return await self.call(OutboxStore.first_subscribed_at)

    async def probe_write(self) -> None:
        await self.call(OutboxStore.probe_write)

    async def request_reconcile(self, sobject: str, at: str | None = None, since: datetime | None = None) -> None:
        await self.call(lambda s: s.request_reconcile(sobject, at, since))

    async def pending_reconciles(self) -> dict[str, str]:
        return await self.call(OutboxStore.pending_reconciles)

    async def reconcile_done(self, sobject: str, requested_at: str) -> bool:
        return await self.call(lambda s: s.reconcile_done(sobject, requested_at))
