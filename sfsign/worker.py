"""The job state machine: queued → fetched → rendered → signed → uploaded → done.

For profiles at B-LT or B-LTA the record shows `Signed` (at B-T) after `uploaded`, and the job goes
on in the background: ltv_pending → ltv_upgraded → ltv_uploaded → done adds the validation data
(and the document timestamp) as a new version of the same Salesforce File.

Each step reads what the previous step persisted (outbox row and artifact files) and persists its own
result before the next begins, so a crash at any point resumes at the step that was interrupted and
never signs twice (a second signature would carry another time and hash). Failures are classified:
transient ones are retried with capped exponential backoff and jitter for as long as the retry window
lasts (`retry_for_s`, 72 h by default, counted from the first failure since the job last moved on), then
the job is `dead` and its record says what a person must do; permanent ones write the reason on the
record (`Sign_Status__c = Error`) and park the job as `error` until `sfsign retry`. A job whose file may
already be in Salesforce (uploaded, or its upload in doubt) is never given up: it retries its
write-back until Salesforce takes it, so an outage never leaves a file without its record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from sfsign.aio import wait_any
from sfsign.batching import Batcher
from sfsign.config import ProfileConfig, RuleConfig, Rules, read_secret
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.sign import (
    Appearance,
    KeySource,
    KeySpec,
    Pkcs11KeySpec,
    SignatureLevel,
    SigningError,
    check_certificate_validity,
    load_signer,
)
from sfsign.documents.tsa import TsaAuth
from sfsign.governor import ApiGovernor
from sfsign.mapping import NotRenderable, build_document, file_name_for, file_title_for
from sfsign.ops.durations import human_age
from sfsign.ops.metrics import Metrics
from sfsign.outbox import REISSUE_SOURCE, AuditEvent, Job, JobState, Outbox, OutboxStore, audit_time
from sfsign.pending import PendingNotes
from sfsign.private_files import private_dir, write_private
from sfsign.record_types import (
    EVENT_ANY_RULE_SOURCE,
    EXPLICIT_SOURCES,
    RecordTypeNotRead,
    covering_rule,
    uncovered_reason,
)
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import Record
from sfsign.salesforce.record_fields import long_text, pending_fields
from sfsign.salesforce.records import SignableRecord, parse_records, record_queries
from sfsign.salesforce.rest import COLLECTION_LIMIT, ContentVersionRef, NewFile, SalesforceRest, soql_quote
from sfsign.salesforce.writeback import WriteBack, WriteBackOutcome, write_back_many

log = structlog.get_logger("sfsign.worker")

STATUS_PENDING = "Pending"
STATUS_SIGNED = "Signed"
ALREADY_SIGNED = "ALREADY_SIGNED"  # error code of a job that found its record signed before this outbox knew it
STATUS_ERROR = "Error"


# Running jobs in these states may still join the fetch / upload / write-back batch.
_BEFORE_FETCH = frozenset({JobState.QUEUED})
_BEFORE_UPLOAD = frozenset({JobState.QUEUED, JobState.FETCHED, JobState.RENDERED, JobState.SIGNED,
                            JobState.LTV_PENDING, JobState.LTV_UPGRADED})
_BEFORE_WRITE = _BEFORE_UPLOAD | {JobState.UPLOADED, JobState.LTV_UPLOADED}


class PermanentFailure(Exception):
    """Retrying cannot help; a person must fix the record, the template or the configuration."""

    def __init__(self, reason: str, code: str = "PERMANENT") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientFailure(Exception):
    """Worth retrying later (Salesforce unavailable, row lock, timeout...)."""

    def __init__(self, reason: str, code: str = "TRANSIENT", long_backoff: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.long_backoff = long_backoff


def _transient_sf(exc: BaseException) -> bool:
    return isinstance(exc, SalesforceError) and exc.transient and not exc.uncertain


def refused_as_a_whole(exc: BaseException) -> bool:
    """Salesforce answered a batch call with a 4xx error for the whole request: nothing of it was applied,
    and one item may be at fault (a malformed part), so the batcher sends its items one by one."""
    return (isinstance(exc, SalesforceError) and exc.status is not None and 400 <= exc.status < 500
            and not exc.transient and not exc.uncertain)


# States in which the job's file is (or may be) in Salesforce: the retry window never ends them, or an
# outage could leave an uploaded file that its record does not show.
_FILE_IN_SALESFORCE = frozenset({JobState.UPLOADED, JobState.LTV_UPLOADED})


@dataclass
class WorkerConfig:
    artifacts_dir: Path
    concurrency: int = 4
    retry_for_s: float = 72 * 3600.0  # a job failing transiently this long is dead (unless its file is uploaded)
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    long_backoff_s: float = 900.0  # REQUEST_LIMIT_EXCEEDED: the org's allocation needs time to recover
    poll_interval_s: float = 5.0
    alert_after_attempts: int = 3
    multi_currency: bool = True
    ltv_delay_s: float = 2.0  # B-LT/B-LTA upgrades wait this long, so fresh documents go first
    artifact_grace_s: float = 0.0  # > 0: keep a done job's PDFs this long (the retention purge removes them)
    cpu_slots: int = 4  # documents handed to the process pool at once (2 per pool process): bounded memory
    batch_linger_s: float = 0.05  # a batch waits at most this long while work trickles in ...
    batch_linger_burst_s: float = 8.0  # ... and this long during a burst, when bigger batches save API calls
    batch_settle_s: float = 0.25  # during a burst, a batch is complete once no job arrived for this long
    fetch_batch_max: int = 200
    upload_batch_max: int = 100  # files per sObject Collections request (≤ 200, ≤ 500 MB)
    write_batch_max: int = 800  # records per write-back (4 collections of 200 in one composite)
    governor_defer_s: float = 900.0  # how long non-urgent work waits while the API budget is tight
    pending_after_s: float = 2.0  # a job waiting this long for a worker shows Pending on its record


class Worker:
    """Claims due jobs from the outbox and drives each through its steps, a bounded number at once."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        rest: SalesforceRest,
        rules: Rules,
        cpu_pool: Executor,
        config: WorkerConfig,
        instance_url: Callable[[], str],
        metrics: Metrics | None = None,
        governor: ApiGovernor | None = None,
    ) -> None:
        self.outbox = outbox
        self.governor = governor
        self.rest = rest
        self.rules = rules
        self.cpu_pool = cpu_pool
        self.config = config
        self.instance_url = instance_url
        self.metrics = metrics or Metrics()
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._state_of: dict[int, JobState] = {}  # what each running job is doing: when batches may go
        self._per_state: Counter[JobState] = Counter()  # the same, counted (read on every batcher wake-up)
        self._cpu = asyncio.Semaphore(max(1, config.cpu_slots))
        self.audit_lock = asyncio.Lock()  # the write-back and the daemon's audit flusher never send a row twice
        linger = self._linger
        self._last_claim = 0.0
        self.fetcher: Batcher[tuple[str, str, str], Fetched] = Batcher(
            "fetch", self._fetch_batch, max_size=config.fetch_batch_max, linger_s=linger,
            waiting_for=lambda: self._count(_BEFORE_FETCH), on_batch=self._batch_metric("fetch"),
            settle_s=self._settle, split_on=refused_as_a_whole,
        )
        self.uploader: Batcher[NewFile, str] = Batcher(
            "upload", self._upload_batch, max_size=min(config.upload_batch_max, COLLECTION_LIMIT), linger_s=linger,
            waiting_for=lambda: self._count(_BEFORE_UPLOAD), on_batch=self._batch_metric("upload"),
            settle_s=self._settle, split_on=refused_as_a_whole,
        )
        self.writer: Batcher[WriteBack, Written] = Batcher(
            "write-back", self._write_batch, max_size=config.write_batch_max, linger_s=linger,
            waiting_for=lambda: self._count(_BEFORE_WRITE), on_batch=self._batch_metric("write-back"),
            settle_s=self._settle, split_on=refused_as_a_whole,
        )
        self._batchers: list[Batcher[Any, Any]] = [self.fetcher, self.uploader, self.writer]
        self._batch_stop = asyncio.Event()
        self._batch_tasks: list[asyncio.Task[None]] = []
        self._claimed: dict[int, Job] = {}  # each running job as it was claimed
        self.pending = PendingNotes(
            outbox=outbox, write=self._write_batch, after_s=config.pending_after_s, batch_max=config.write_batch_max,
            claimed=self._claimed.values, workers_busy=lambda: len(self._running) >= config.concurrency,
            cpu_busy=lambda: len(self._running) > config.cpu_slots, constrained=self.constrained,
            announced=self._wake.set,
        )
        self._announcer: asyncio.Task[None] | None = None
        self._steps: dict[JobState, Callable[[Job, Rules], Awaitable[Job]]] = {
            JobState.QUEUED: self._fetch,
            JobState.FETCHED: self._render,
            JobState.RENDERED: self._sign,
            JobState.SIGNED: self._upload,
            JobState.UPLOADED: self._write_back,
            JobState.LTV_PENDING: self._ltv_upgrade,
            JobState.LTV_UPGRADED: self._ltv_upload,
            JobState.LTV_UPLOADED: self._ltv_write_back,
        }
        private_dir(config.artifacts_dir)

    # ------------------------------------------------------------------------------- dispatching

    def wake(self) -> None:
        """Called by intake after it committed new jobs."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def _set_state(self, job_id: int, state: JobState | None) -> None:
        previous = self._state_of.pop(job_id, None)
        if previous is not None:
            self._per_state[previous] -= 1
        if state is not None:
            self._state_of[job_id] = state
            self._per_state[state] += 1

    def _count(self, states: frozenset[JobState]) -> int:
        return sum(self._per_state[s] for s in states)

    def _batch_metric(self, stage: str) -> Callable[[int], None]:
        return self.metrics.batch_size.labels(stage).observe

    def constrained(self) -> bool:
        """The API budget is tight (see governor.py); the gauge follows."""
        tight = self.governor is not None and self.governor.constrained()
        self.metrics.governor_constrained.set(1 if tight else 0)
        return tight

    def _settle(self) -> float:
        """During a burst, wait until jobs stop arriving for a moment before a batch counts as complete."""
        if len(self._running) <= self.config.cpu_slots:
            return 0.0
        return max(0.0, self._last_claim + self.config.batch_settle_s - time.monotonic())

    def _linger(self) -> float:
        """Short while documents trickle in; long when more jobs run than the CPU can sign at once, or when
        the API budget is tight (bigger batches, fewer calls)."""
        busy = len(self._running) > self.config.cpu_slots or self.constrained()
        return self.config.batch_linger_burst_s if busy else self.config.batch_linger_s

    def _poke_batchers(self) -> None:
        for batcher in self._batchers:
            batcher.poke()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; in-flight jobs (and the batchers they wait on) are left to `drain`."""
        if not self._batch_tasks:
            self._batch_tasks = [
                asyncio.create_task(b.run(self._batch_stop), name=f"batcher-{b.name}") for b in self._batchers
            ]
        if self._announcer is None:
            self._announcer = asyncio.create_task(self.pending.run(stop, self.config.poll_interval_s),
                                                  name="pending-announcer")
        while not stop.is_set():
            self._wake.clear()
            free = self.config.concurrency - len(self._running)
            if free > 0:
                async with self.pending.claim_lock:
                    jobs = await self.outbox.call(partial(
                        _claim, now=time.time(), limit=free, running=[*self._running, *self.pending.announcing]))
                    if jobs:
                        self._last_claim = time.monotonic()
                    for job in jobs:
                        task = asyncio.create_task(self._process(job), name=f"job-{job.transaction_id}")
                        self._running[job.id] = task
                        self._claimed[job.id] = job
                        task.add_done_callback(partial(self._finished, job.id))
            # Jobs already running are due too (their next_attempt_at has passed); counting them made
            # this loop spin, two outbox queries per turn, for as long as any job ran. Jobs being
            # announced are claimed once their Pending write is through (it wakes this loop).
            next_due = await self.outbox.call(partial(
                OutboxStore.next_due_at, exclude=[*self._running, *self.pending.announcing]))
            timeout = self.config.poll_interval_s
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - time.time()))
            if free <= 0 or timeout > 0:
                await wait_any(stop, self._wake, within_s=max(timeout, 0.01))

    def _finished(self, job_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._claimed.pop(job_id, None)
        self.pending.forget(job_id)
        self._set_state(job_id, None)
        self._poke_batchers()
        self._wake.set()

    async def drain(self, deadline_s: float) -> int:
        """Let in-flight jobs finish their current step; return how many were still running."""
        if self._announcer is not None:  # first: no Pending note may start once jobs are being cancelled
            self._announcer.cancel()
            await asyncio.gather(self._announcer, return_exceptions=True)
        tasks = list(self._running.values())
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=deadline_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._batch_stop.set()
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)
        return len(pending)

    # -------------------------------------------------------------------------------- processing

    async def _process(self, job: Job) -> None:
        # The rules in force when the job was claimed: a reload (SIGHUP) swaps `self.rules` for the
        # next job, while this one finishes all its steps with the template, profile and file name
        # it started with.
        rules = self.rules
        with structlog.contextvars.bound_contextvars(
            transaction_id=job.transaction_id, record_id=job.record_id, rule=job.rule
        ):
            try:
                while job.state in self._steps and job.next_attempt_at <= time.time():
                    self._set_state(job.id, job.state)
                    self._poke_batchers()
                    step = self._steps[job.state]
                    started = time.perf_counter()
                    before = job.state
                    job = await step(job, rules)
                    if job.failing_since is not None and job.state is not before:
                        job = await self.outbox.update(job.id, failing_since=None)  # it moved on: a new window
                    self.metrics.step_seconds.labels(step.__name__.lstrip("_")).observe(
                        time.perf_counter() - started
                    )
                    log.info(
                        "step done",
                        step=step.__name__.lstrip("_"),
                        state=job.state.value,
                        ms=round((time.perf_counter() - started) * 1000, 1),
                    )
                if job.state is JobState.DONE:
                    log.info("job done", level=job.ltv_level or job.level)
            except PermanentFailure as exc:
                await self._fail_permanently(job, exc.reason, exc.code)
            except TransientFailure as exc:
                await self._schedule_retry(job, exc.reason, exc.code, exc.long_backoff)
            except SalesforceError as exc:
                if exc.transient:
                    await self._schedule_retry(job, str(exc), exc.error_code or "SALESFORCE", exc.needs_long_backoff)
                else:
                    await self._fail_permanently(job, exc.message or str(exc), exc.error_code or "SALESFORCE")
            except asyncio.CancelledError:
                log.warning("job interrupted; it resumes from its last persisted step", state=job.state.value)
                raise
            except Exception as exc:  # a bug or an unexpected library error: retry, never lose the job
                log.exception("unexpected failure", state=job.state.value)
                await self._schedule_retry(job, f"{type(exc).__name__}: {exc}", "UNEXPECTED", False)

    async def _schedule_retry(self, job: Job, reason: str, code: str, long_backoff: bool) -> None:
        now = time.time()
        attempts = job.attempts + 1
        failing_since = job.failing_since or now
        self.metrics.retries.labels(code).inc()
        if attempts >= self.config.alert_after_attempts:
            self.metrics.failing_jobs.labels(code).inc()
        if now - failing_since >= self.config.retry_for_s:
            # Read again: the step may have changed the row (an upload marked in doubt) after `job` was read.
            current = await self.outbox.call(partial(OutboxStore.get, job_id=job.id))
            if current.state not in _FILE_IN_SALESFORCE and not current.upload_uncertain:
                if await self._give_up(current, attempts, now - failing_since, reason, code):
                    return
        delay = self.config.long_backoff_s if long_backoff else min(
            self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (min(attempts, 64) - 1)
        )
        delay = delay * (0.5 + random.random() / 2)  # jitter, not crypto
        level = log.error if attempts >= self.config.alert_after_attempts else log.warning
        level("step failed; will retry", attempts=attempts, retry_in_s=round(delay, 1), error_code=code,
              reason=reason)
        await self.outbox.update(
            job.id, attempts=attempts, next_attempt_at=now + delay, last_error=reason, error_code=code,
            failing_since=failing_since,
        )
        await self._show_pending(job, f"retrying: {reason}")

    async def _show_pending(self, job: Job, note: str) -> None:
        """A retrying job's record shows `Pending` and why it waits, so the rep is never left guessing. Only
        before the record shows the signed document; a note, so a failure to write it is logged and never
        fails or delays the job. One plain update, no in-step retries (Salesforce may be what fails)."""
        if job.signed_visible_at is not None:
            return
        await self.pending.before_record_write(job.id)
        try:
            await self.rest.update(job.sobject, job.record_id, pending_fields(job.transaction_id, note))
        except Exception as exc:
            log.warning("could not show Pending on the record", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _give_up(self, job: Job, attempts: int, failing_for_s: float, reason: str, code: str) -> bool:
        """Past the retry window: the job is `dead` once its record says so and what a person must do.
        While the record cannot be written either (Salesforce still away) the job keeps retrying, and may
        yet finish; returns whether it is dead."""
        message = (f"Gave up after {attempts} attempts over {human_age(failing_for_s)}: {reason}. A person must "
                   f"act: once the cause is fixed, run `sfsign retry {job.transaction_id}`.")
        try:
            await self._write_error(job, message)
        except SalesforceError as exc:
            if exc.transient:
                log.warning("retry window over, but the record cannot show it yet; still retrying",
                            error_code=exc.error_code)
                return False
            log.error("could not write the error on the record", error_code=exc.error_code)
        self.metrics.dead_jobs.inc()
        log.error("job dead: failing for the whole retry window", attempts=attempts, error_code=code, reason=reason,
                  failing_for_s=round(failing_for_s))
        await self.outbox.update(job.id, state=JobState.DEAD, attempts=attempts, last_error=message, error_code=code,
                                 audit_detail=f"{code}: {reason}")
        return True

    async def _fail_permanently(self, job: Job, reason: str, code: str) -> None:
        log.error("job failed permanently", error_code=code, reason=reason)
        self.metrics.errored_jobs.labels(code).inc()
        job = await self.outbox.update(job.id, last_error=reason, error_code=code)
        try:
            await self._write_error(job, reason)
        except SalesforceError as exc:
            if not exc.transient:
                log.error("could not write the error on the record", error_code=exc.error_code)
            else:
                # The record must show the error: keep the job active so the report is retried.
                await self._schedule_retry(job, f"{reason} (not yet reported on the record: {exc})", code, False)
                return
        await self.outbox.update(job.id, state=JobState.ERROR, audit_detail=f"{code}: {reason}")

    async def _write_error(self, job: Job, reason: str) -> None:
        await self.pending.before_record_write(job.id)
        if job.signed_visible_at:
            # The B-T document is signed and on the record; only its long-term upgrade failed. The
            # status stays `Signed` (it is true) and the reason says what is missing.
            fields = {"Sign_Error__c": f"Signed at {job.level}, but the upgrade to long-term validation "
                      f"failed: {reason}"[:32000]}
        else:
            fields = {
                "Sign_Transaction_Id__c": job.transaction_id,
                "Sign_Status__c": STATUS_ERROR,
                "Sign_Error__c": reason[:32000],
            }
        await self._sf(self.rest.update, job.sobject, job.record_id, fields)

    async def _sf(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A Salesforce call with a few quick in-step retries for transient, certain failures."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_transient_sf),
            reraise=True,
        ):
            with attempt:
                return await fn(*args)
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------------------------- steps

    def _artifact(self, job: Job, kind: str) -> Path:
        return self.config.artifacts_dir / f"{job.transaction_id}.{kind}"

    async def _fetch(self, job: Job, rules: Rules) -> Job:
        rule = rules.by_name(job.rule)
        if rule is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        fetched = await self.fetcher.submit((job.sobject, job.record_id, job.transaction_id))
        if fetched.existing_file is not None:
            return await self._adopt_existing_file(job, fetched.existing_file, fetched.record)
        record = fetched.record
        if record is None:
            raise PermanentFailure(f"{job.sobject} {job.record_id} was not found (deleted?)", "NOT_FOUND")
        if job.source == EVENT_ANY_RULE_SOURCE:
            taken = await self._take_covering_rule(job, rule, rules, record)
            if isinstance(taken, Job):
                return taken
            job, rule = taken
        skipped = await self._skip_other_record_type(job, rule, rules, record)
        if skipped is not None:
            return skipped
        shown = record.sign_transaction_id
        if shown and self._signed_before_this_outbox(job, record, rules) and not await self.outbox.call(
                partial(OutboxStore.knows_transaction, transaction_id=shown)):
            return await self._tell_signed_before(job, shown)
        try:
            document = build_document(record, rule, rules, job.transaction_id, datetime.now(UTC))
        except NotRenderable as exc:
            raise PermanentFailure(str(exc), "NOT_RENDERABLE") from None
        title = file_title_for(rule, document, job.record_id)
        return await self.outbox.update(
            job.id,
            state=JobState.FETCHED,
            document_json=document.model_dump_json(),
            file_title=title,
            file_name=file_name_for(title, job.transaction_id),
        )

    @staticmethod
    def _signed_before_this_outbox(job: Job, record: SignableRecord, rules: Rules) -> bool:
        """Whether the record shows `Signed` by another transaction while this job is a new trigger (not a
        Re-issue) and its object has one rule: then that signature is this rule's document. Only a job the
        intake let through gets here, so the outbox does not know the document (a fresh or lost data
        directory), which the caller checks: a transaction it knows (a job ended `error` after its upload)
        is the documented re-entry, and signs. With several rules on the object the record's `Sign_*` fields
        cannot say which rule signed, and the job signs too."""
        shown = record.sign_transaction_id
        return (job.source != REISSUE_SOURCE and record.sign_status == STATUS_SIGNED and bool(shown)
                and shown != job.transaction_id and len(rules.for_object(job.sobject)) == 1)

    async def _tell_signed_before(self, job: Job, shown: str) -> Job:
        """Sign nothing: the record keeps `Signed`, its `Sign_Error__c` gets the intake's already-signed note,
        the signed transaction's trail an `already_signed` event (first, so a crash repeats it rather than
        loses it), and the job ends `error` (ALREADY_SIGNED), which holds no slot: a Re-issue signs anew."""
        rows = await self._sf(self.rest.query, shown_signature_query(job.sobject, job.record_id))
        signed_on = rows[0].get("Signed_At__c") if rows else None
        note = already_signed_note(signed_on, shown)
        await self.pending.before_record_write(job.id)
        await self._sf(self.rest.update, job.sobject, job.record_id, {"Sign_Error__c": note})
        detail = f"{job.source} trigger signed nothing (the record shows it, the local outbox did not know it): {note}"
        if job.reason:
            detail += f" Reason given: {job.reason}"
        await self.outbox.commit_event(None, None, [], [AuditEvent(
            transaction_id=shown, sobject=job.sobject, record_id=job.record_id, event_type="already_signed",
            actor=job.requested_by or "sfsign", detail=detail)])
        log.warning("trigger for a record signed before this outbox knew of it: nothing signed, the record says so",
                    signed_transaction_id=shown)
        return await self.outbox.update(job.id, state=JobState.ERROR, error_code=ALREADY_SIGNED, last_error=note,
                                        audit_detail=f"{ALREADY_SIGNED}: {note}")

    async def _take_covering_rule(self, job: Job, rule: RuleConfig, rules: Rules,
                                  record: SignableRecord) -> tuple[Job, RuleConfig] | Job:
        """A Send for Signature that named no rule got the object's first rule; the record is read now, so it
        takes the rule covering its type instead. That rule's slot may be taken: signed already (the record
        is told so, as the intake would have), or a signature in progress (nothing more is signed)."""
        try:
            covering = covering_rule(rule, rules, record)
        except RecordTypeNotRead as exc:
            raise TransientFailure(f"{exc}; fetching it again", "RECORD_TYPE_NOT_READ") from None
        if covering is None:
            return job, rule
        signed = await self.outbox.call(partial(
            OutboxStore.signed_job, sobject=job.sobject, record_id=job.record_id, rule=covering.name))
        if signed is not None:
            return await self._tell_signed_before(job, signed.transaction_id)
        try:
            job = await self.outbox.update(job.id, rule=covering.name)
        except sqlite3.IntegrityError:  # the one-job-per-record-and-rule index: another job has it in hand
            why = (f"Not signed: rule {covering.name!r}, which covers this record's type, is already signing it "
                   "in another transaction.")
            await self.pending.before_record_write(job.id)
            await self._sf(self.rest.update, job.sobject, job.record_id, {Record.ERROR: long_text(why)})
            return await self.outbox.update(job.id, state=JobState.SKIPPED, done_at=time.time(), audit_detail=why)
        log.info("Send for Signature named no rule: the rule covering the record's type signs it",
                 rule=covering.name, first_rule=rule.name)
        return job, covering

    async def _skip_other_record_type(self, job: Job, rule: RuleConfig, rules: Rules,
                                      record: SignableRecord) -> Job | None:
        """A record whose type the rule does not cover: no document and, for a stage change, no write on
        the record (the rule was never meant for it); a rep's Send for Signature gets a note saying which
        record types the rule covers. The audit trail and the log say why, either way."""
        try:
            why = uncovered_reason(rule, rules, record)
        except RecordTypeNotRead as exc:
            raise TransientFailure(f"{exc}; fetching it again", "RECORD_TYPE_NOT_READ") from None
        if why is None:
            return None
        if job.source in EXPLICIT_SOURCES:
            await self.pending.before_record_write(job.id)
            await self._sf(self.rest.update, job.sobject, job.record_id, {"Sign_Error__c": why[:32000]})
        log.info("record type not covered by the rule: nothing signed", source=job.source, reason=why)
        return await self.outbox.update(job.id, state=JobState.SKIPPED, done_at=time.time(), audit_detail=why)

    async def _adopt_existing_file(self, job: Job, file: ContentVersionRef, record: SignableRecord | None) -> Job:
        """A file with this job's transaction id is in Salesforce already: the trigger was handled before
        this outbox knew of it (job rows purged, a fresh or restored data directory). Exactly one document
        per trigger does not rest on the outbox: nothing is signed again. The record (as read with the file,
        in the same call) is completed only when it shows no signature or this one (an upload whose
        write-back never happened); a record that shows a newer transaction is left as it is."""
        shown = record.sign_transaction_id if record is not None else None
        status = record.sign_status if record is not None else None
        detail = f"file {file.content_document_id or file.id} with this transaction id is already in Salesforce: " \
                 "not signed again"
        if record is not None and (not shown or shown == job.transaction_id) and status != STATUS_SIGNED:
            url = f"{self.instance_url()}/lightning/r/ContentDocument/{file.content_document_id}/view"
            await self.pending.before_record_write(job.id)
            await self._sf(self.rest.update, job.sobject, job.record_id, {
                "Sign_Transaction_Id__c": job.transaction_id, "Sign_Status__c": STATUS_SIGNED, "Sign_Error__c": None,
                "Signed_Document_Id__c": file.content_document_id, "Signed_Document_Url__c": url,
            })
            detail += "; the record now shows it"
        elif shown and shown != job.transaction_id:
            detail += f"; the record shows transaction {shown} and is left as it is"
        log.warning("trigger already handled before this outbox knew of it; not signed again",
                    content_version_id=file.id, record_transaction_id=shown)
        now = time.time()
        return await self.outbox.update(
            job.id, state=JobState.DONE, done_at=now, signed_visible_at=now, content_version_id=file.id,
            content_document_id=file.content_document_id, audit_detail=detail,
        )

    async def _render(self, job: Job, rules: Rules) -> Job:
        template = rules.templates.get(job.rule)
        if template is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        loop = asyncio.get_running_loop()
        try:
            async with self._cpu:
                pdf, boxes, notes = await loop.run_in_executor(
                    self.cpu_pool, doc_jobs.render_job, job.document_json or "{}", str(template)
                )
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "RENDER_FAILED") from None
        for note in notes:
            log.warning("rendering changed the document", note=note)
        path = self._artifact(job, "rendered.pdf")
        await loop.run_in_executor(None, write_private, path, pdf)
        await loop.run_in_executor(None, write_private, self._artifact(job, "boxes.json"), json.dumps(boxes).encode())
        return await self.outbox.update(job.id, state=JobState.RENDERED)

    async def _sign(self, job: Job, rules: Rules) -> Job:
        rule = rules.by_name(job.rule)
        if rule is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        profile = rules.profiles[rule.profile]
        loop = asyncio.get_running_loop()
        rendered = self._artifact(job, "rendered.pdf")
        box_file = self._artifact(job, "boxes.json")
        if not rendered.exists() or not box_file.exists():
            # The artifact vanished (disk wiped?): render again; nothing was signed yet.
            return await self.outbox.update(job.id, state=JobState.FETCHED)
        pdf = await loop.run_in_executor(None, rendered.read_bytes)
        boxes = json.loads(await loop.run_in_executor(None, box_file.read_text))
        try:
            async with self._cpu:
                signed = await loop.run_in_executor(
                    self.cpu_pool, doc_jobs.sign_job, pdf, boxes, signing_request(profile)
                )
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "SIGN_FAILED") from None
        detail = (
            f"PAdES {signed.level}, SHA-256 {signed.sha256}, signer {signed.signer_subject} "
            f"(serial {signed.signer_serial}), timestamp {signed.timestamp_time or 'none'}, "
            f"eIDAS {profile.eidas_level} (declared), validation: {signed.validation}"
        )
        if signed.downgraded_because:
            log.warning("signed at B-B: no timestamp authority answered and the profile allows a downgrade",
                        profile=rule.profile, reason=signed.downgraded_because)
            detail += f"; DOWNGRADED to B-B (profile on_tsa_failure: downgrade): {signed.downgraded_because}"
        await loop.run_in_executor(None, write_private, self._artifact(job, "signed.pdf"), signed.pdf)
        return await self.outbox.update(
            job.id,
            state=JobState.SIGNED,
            sha256=signed.sha256,
            level=signed.level,
            signer_subject=signed.signer_subject,
            signer_serial=signed.signer_serial,
            signed_at=signed.signed_at,
            timestamp_time=signed.timestamp_time,
            validation=signed.validation,
            audit_detail=detail,
        )

    async def _upload(self, job: Job, rules: Rules) -> Job:
        signed_missing = not self._artifact(job, "signed.pdf").exists()
        if job.upload_uncertain or job.attempts > 0 or signed_missing:
            # A previous insert may have reached Salesforce before the connection failed: look first.
            existing = await self._sf(self.rest.find_content_version, job.transaction_id)
            if existing is not None:
                log.info("upload already happened; reusing it", content_version_id=existing.id)
                return await self.outbox.update(
                    job.id,
                    state=JobState.UPLOADED,
                    content_version_id=existing.id,
                    content_document_id=existing.content_document_id,
                    upload_uncertain=0,
                )
        signed_path = self._artifact(job, "signed.pdf")
        if not signed_path.exists():
            # Nothing of this transaction is in Salesforce (checked above when in doubt): sign afresh.
            log.warning("signed PDF missing from the data directory; rendering and signing again")
            return await self.outbox.update(job.id, state=JobState.FETCHED, sha256=None)
        title, path_on_client = _file_of(job)
        cv_id = await self._guarded_upload(job, NewFile(
            title=title,
            path_on_client=path_on_client,
            path=signed_path,  # read into the request body, not held by every waiting job
            first_publish_location_id=job.record_id,
            transaction_id=job.transaction_id,
        ))
        return await self.outbox.update(
            job.id, state=JobState.UPLOADED, content_version_id=cv_id, upload_uncertain=0,
            audit_detail=f"ContentVersion {cv_id}",
        )

    async def _guarded_upload(self, job: Job, file: NewFile) -> str:
        """Upload with the job marked `upload_uncertain` first: a failure that may have reached Salesforce
        leaves the mark, so the next attempt looks for the file before uploading it again."""
        await self.outbox.update(job.id, upload_uncertain=1)
        try:
            return await self.uploader.submit(file)
        except SalesforceError as exc:
            if not exc.uncertain:
                await self.outbox.update(job.id, upload_uncertain=0)
            raise

    @staticmethod
    def _profile(job: Job, rules: Rules) -> ProfileConfig:
        rule = rules.by_name(job.rule)
        if rule is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        return rules.profiles[rule.profile]

    async def _write_back(self, job: Job, rules: Rules) -> Job:
        profile = self._profile(job, rules)
        document_url = f"{self.instance_url()}/lightning/r/ContentDocument/{{document_id}}/view"
        fields: dict[str, Any] = {
            "Sign_Transaction_Id__c": job.transaction_id,
            "Sign_Status__c": STATUS_SIGNED,
            "Signed_At__c": job.signed_at,
            "Sign_Error__c": None,
            "Sign_Document_Hash__c": job.sha256,
            "Sign_Level__c": job.level,
            "Sign_Timestamp__c": job.timestamp_time,
            "Sign_Signer__c": (job.signer_subject or "")[:255] or None,
            "Sign_Signer_Serial__c": job.signer_serial,
            "Sign_Validation__c": (job.validation or "")[:255] or None,
            "Sign_Eidas_Level__c": profile.eidas_level,
        }
        upgrade = profile.upgrades and job.level == SignatureLevel.B_T.value
        # The audit event of this step's outcome; `{document_id}` is filled in once the 069 is known.
        outcome = _Outcome(
            JobState.LTV_PENDING if upgrade else JobState.DONE,
            f"Signed; file {{document_id}}; upgrade to {profile.level} pending" if upgrade
            else "Signed; file {document_id}",
        )
        await self.pending.before_record_write(job.id)
        if job.content_document_id:  # known from the upload guard: no lookup needed
            document_id: str | None = job.content_document_id
            fields["Signed_Document_Id__c"] = document_id
            fields["Signed_Document_Url__c"] = document_url.format(document_id=document_id)
            written = await self.writer.submit(WriteBack(
                job.sobject, job.record_id, fields, outcome_audit=outcome.record(job, document_id)))
        else:
            written = await self.writer.submit(WriteBack(
                job.sobject, job.record_id, fields, content_version_id=job.content_version_id,
                document_url=document_url, outcome_audit=outcome.record(job, None),
            ))
            document_id = written.document_id
            job = await self.outbox.update(job.id, content_document_id=document_id)
        now = time.time()
        self.metrics.documents_signed.labels(job.rule).inc()
        if job.event_time_ms:
            latency = now * 1000 - job.event_time_ms
            self.metrics.end_to_end_seconds.observe(max(latency, 0) / 1000)
            log.info("signed document on the record", end_to_end_ms=round(latency), level=job.level)
        recorded = outcome.audit_changes(document_id, written.outcome_sent)
        if upgrade:
            # The rep sees `Signed` now; the long-term validation data follows in the background.
            return await self.outbox.update(
                job.id, state=JobState.LTV_PENDING, signed_visible_at=now, document_json=None, attempts=0,
                next_attempt_at=now + self.config.ltv_delay_s, **recorded,
            )
        job = await self.outbox.update(
            job.id, state=JobState.DONE, done_at=now, signed_visible_at=now, document_json=None, last_error=None,
            **recorded,
        )
        # The signed file now lives in Salesforce; keep no customer data on our disk.
        await asyncio.get_running_loop().run_in_executor(None, self._remove_artifacts, job)
        return job

    # ------------------------------------------------------------------ long-term validation (B-LT, B-LTA)

    async def _ltv_upgrade(self, job: Job, rules: Rules) -> Job:
        if self.constrained():
            # Non-urgent: the record already shows Signed. Wait for the API budget to recover.
            log.info("API budget tight; long-term validation upgrade deferred",
                     defer_s=self.config.governor_defer_s)
            return await self.outbox.update(job.id, next_attempt_at=time.time() + self.config.governor_defer_s)
        profile = self._profile(job, rules)
        loop = asyncio.get_running_loop()
        signed_path = self._artifact(job, "signed.pdf")
        if signed_path.exists():
            pdf = await loop.run_in_executor(None, signed_path.read_bytes)
        else:  # the data directory was wiped or moved: Salesforce has the signed file
            pdf = await self._sf(self.rest.download_version_data, job.content_version_id)
        try:
            async with self._cpu:
                result = await loop.run_in_executor(
                    self.cpu_pool, doc_jobs.upgrade_job, pdf, upgrade_request(profile)
                )
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "LTV_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "LTV_FAILED") from None
        await loop.run_in_executor(None, write_private, self._artifact(job, "ltv.pdf"), result.pdf)
        return await self.outbox.update(
            job.id, state=JobState.LTV_UPGRADED, ltv_sha256=result.sha256, ltv_level=result.level,
            validation=result.validation, archive_due=result.archive_due,
            audit_detail=f"PAdES {result.level}, SHA-256 {result.sha256}, validation: {result.validation}, "
            f"archive timestamp due {result.archive_due or 'unknown'}",
        )

    async def _ltv_upload(self, job: Job, rules: Rules) -> Job:
        loop = asyncio.get_running_loop()
        path = self._artifact(job, "ltv.pdf")
        data = await loop.run_in_executor(None, path.read_bytes) if path.exists() else None
        if job.upload_uncertain or job.attempts > 0 or data is None:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest() if data is not None else None
            if md5 is not None and job.content_document_id:
                existing = await self._sf(self.rest.find_version_by_checksum, job.content_document_id, md5)
                if existing is not None:
                    return await self.outbox.update(
                        job.id, state=JobState.LTV_UPLOADED, ltv_version_id=existing, upload_uncertain=0
                    )
        if data is None:
            log.warning("upgraded PDF missing from the data directory; upgrading again")
            return await self.outbox.update(job.id, state=JobState.LTV_PENDING, ltv_sha256=None)
        title, path_on_client = _file_of(job)
        version_id = await self._guarded_upload(job, NewFile(
            title=title,
            path_on_client=path_on_client,
            data=data,
            transaction_id=job.transaction_id,
            content_document_id=job.content_document_id,
            reason_for_change=f"sfsign: PAdES {job.ltv_level} (long-term validation data)",
        ))
        return await self.outbox.update(
            job.id, state=JobState.LTV_UPLOADED, ltv_version_id=version_id, upload_uncertain=0,
            audit_detail=f"ContentVersion {version_id} (PAdES {job.ltv_level})",
        )

    async def _ltv_write_back(self, job: Job, rules: Rules) -> Job:
        fields = {
            "Sign_Level__c": job.ltv_level,
            "Sign_Document_Hash__c": job.ltv_sha256,
            "Sign_Validation__c": (job.validation or "")[:255] or None,
            "Sign_Archive_Due__c": job.archive_due,
            "Sign_Error__c": None,
        }
        outcome = _Outcome(JobState.DONE, f"PAdES {job.ltv_level} on the record; file version {job.ltv_version_id}")
        written = await self.writer.submit(WriteBack(
            job.sobject, job.record_id, fields, outcome_audit=outcome.record(job, None)))
        job = await self.outbox.update(
            job.id, state=JobState.DONE, done_at=time.time(), last_error=None,
            **outcome.audit_changes(None, written.outcome_sent),
        )
        await asyncio.get_running_loop().run_in_executor(None, self._remove_artifacts, job)
        return job

    def _remove_artifacts(self, job: Job) -> None:
        if self.config.artifact_grace_s > 0:
            return  # kept for the grace period; sfsign.ops.retention deletes them afterwards
        for kind in ("rendered.pdf", "boxes.json", "signed.pdf", "ltv.pdf"):
            self._artifact(job, kind).unlink(missing_ok=True)

    # ------------------------------------------------------------------ batch handlers (one API call each)

    async def _fetch_batch(self, keys: list[tuple[str, str, str]]) -> list[Fetched]:
        """The records and any file already carrying a job's transaction id (so exactly one document per
        trigger does not rest on the outbox alone), read together: every query of the batch goes in one
        `/composite` request (five queries per request), and "the entire series of requests counts as a
        single call toward your API limits" (Salesforce REST API Developer Guide, Send Multiple Requests
        Using Composite, developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-composite-post.html).
        A lone document's fetch is one API call."""
        by_object: dict[str, list[str]] = {}
        for sobject, record_id, _tx in keys:
            by_object.setdefault(sobject, []).append(record_id)
        extras = {sobject: self.rules.fields_for(sobject) for sobject in by_object}  # one set of rules throughout
        soqls: list[str] = []
        spans: list[tuple[str, int, int]] = []  # (sobject, first, end) of its record queries in `soqls`
        for sobject, ids in by_object.items():
            queries = record_queries(sobject, ids, multi_currency=self.config.multi_currency, extra=extras[sobject])
            spans.append((sobject, len(soqls), len(soqls) + len(queries)))
            soqls += queries
        files_from = len(soqls)
        soqls += self.rest.files_by_transaction_queries([tx for _s, _r, tx in keys])
        answers: list[list[dict[str, Any]]] = await self._sf(self.rest.query_many, soqls)
        found: dict[tuple[str, str], SignableRecord] = {}
        for sobject, first, end in spans:
            records = parse_records(sobject, by_object[sobject], answers[first:end], extra=extras[sobject])
            found.update({(sobject, rid): rec for rid, rec in records.items()})
        files = self.rest.files_by_transaction(answers[files_from:])
        return [Fetched(found.get((s, r)) or found.get((s, r[:15])), files.get(tx)) for s, r, tx in keys]

    async def _upload_batch(self, files: list[NewFile]) -> list[str | BaseException]:
        if len(files) == 1:  # a lone document: the plain multipart insert
            f = files[0]
            data = await asyncio.get_running_loop().run_in_executor(None, f.content)
            return [await self.rest.insert_content_version(
                title=f.title, path_on_client=f.path_on_client, data=data,
                first_publish_location_id=f.first_publish_location_id, transaction_id=f.transaction_id,
                content_document_id=f.content_document_id, reason_for_change=f.reason_for_change,
            )]
        results = await self.rest.insert_content_versions(files)
        return [r.id if r.success else (r.error or SalesforceError(None, "UNKNOWN", "upload failed")) for r in results]

    async def _write_batch(self, items: list[WriteBack]) -> list[Written | BaseException]:
        """Write the records back, and send pending audit events along when the flusher is not busy."""
        rows: list[dict[str, Any]] = []
        locked = not self.audit_lock.locked()
        if locked:
            await self.audit_lock.acquire()
        try:
            if locked:
                rows = await self.outbox.call(OutboxStore.pending_audit)
            outcome: WriteBackOutcome = await self._sf(write_back_many, self.rest, items, audit_records(rows))
            if rows and outcome.audit_results:
                sent = [r["id"] for r, ok in zip(rows, outcome.audit_results, strict=False) if ok is True]
                await self.outbox.call(partial(OutboxStore.mark_audit, ids=sent, status="sent"))
        finally:
            if locked:
                self.audit_lock.release()
        flags = outcome.outcome_sent or [False] * len(items)
        return [r if isinstance(r, BaseException) else Written(r, sent)
                for r, sent in zip(outcome.results, flags, strict=True)]


@dataclass(frozen=True)
class Fetched:
    """A job's record as read for rendering (None: not found), and a file already carrying its transaction id."""

    record: SignableRecord | None
    existing_file: ContentVersionRef | None = None


@dataclass(frozen=True)
class Written:
    """A record's write-back: the 069 it now shows, and whether its outcome event went in the same call."""

    document_id: str | None
    outcome_sent: bool = False


@dataclass(frozen=True)
class _Outcome:
    """The audit event a write-back step ends with. It can ride in the write-back call itself
    (`writeback.WriteBack.outcome_audit`), so a lone document costs no fourth call for its trail."""

    state: JobState
    detail: str  # may hold `{document_id}`
    occurred_at: str = field(default_factory=audit_time)

    def record(self, job: Job, document_id: str | None) -> dict[str, Any]:
        detail = self.detail if document_id is None else self.detail.replace("{document_id}", document_id)
        return audit_records([{
            "sobject": job.sobject, "record_id": job.record_id, "transaction_id": job.transaction_id,
            "event_type": self.state.value, "occurred_at": self.occurred_at, "actor": "sfsign", "detail": detail,
        }])[0]

    def audit_changes(self, document_id: str | None, sent: bool) -> dict[str, Any]:
        """Keyword arguments for `OutboxStore.update`: the same event in the outbox, sent or pending."""
        return {"audit_detail": self.detail.replace("{document_id}", document_id or ""),
                "audit_occurred_at": self.occurred_at, "audit_sent": sent}


def audit_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox audit rows as `Signature_Event__c` records."""
    return [
        {
            "Opportunity__c" if r["sobject"] == "Opportunity" else "Quote__c": r["record_id"],
            "Transaction_Id__c": r["transaction_id"],
            "Event_Type__c": r["event_type"],
            "Occurred_At__c": r["occurred_at"],
            "Actor__c": (r["actor"] or "")[:255],
            "Detail__c": r["detail"] or None,
        }
        for r in rows
    ]


def _secret(env: str | None, what: str) -> Any:
    if env is None:
        return None
    value = read_secret(env)
    if value is None:
        raise PermanentFailure(f"{what} is not set: define {env} in the environment or the secrets directory", "CONFIG")
    return value


def key_source(profile: ProfileConfig) -> KeySource:
    """The profile's key, with its secret read now (so rotation needs no restart)."""
    key = profile.key
    if key.pkcs11 is not None:
        hsm = key.pkcs11
        return Pkcs11KeySpec(
            module_path=hsm.module,
            token_label=hsm.token,
            key_label=hsm.key,
            cert_label=hsm.cert,
            cert_path=hsm.cert_file,
            chain_paths=tuple(key.chain),
            pin=_secret(hsm.pin_env, "the token PIN"),
        )
    return KeySpec(
        pkcs12_path=key.pkcs12,
        key_path=key.pem_key,
        cert_path=key.pem_cert,
        chain_paths=tuple(key.chain),
        passphrase=_secret(key.passphrase_env, "the signing key's passphrase"),
    )


def tsa_of(profile: ProfileConfig) -> tuple[tuple[str, ...], TsaAuth | None]:
    if profile.tsa is None:
        return (), None
    password = _secret(profile.tsa.password_env, "the TSA password")
    auth = TsaAuth(username=profile.tsa.username, password=password) if profile.tsa.username else None
    return tuple(profile.tsa.urls), auth


def upgrade_request(profile: ProfileConfig) -> doc_jobs.UpgradeRequest:
    urls, auth = tsa_of(profile)
    return doc_jobs.UpgradeRequest(
        target=SignatureLevel(profile.level), tsa_urls=urls, tsa_auth=auth, trust_roots=tuple(profile.trust_roots)
    )


def signing_request(profile: ProfileConfig) -> doc_jobs.SigningRequest:
    """What the pool needs to sign: B-LT/B-LTA sign at B-T first (the upgrade follows later)."""
    appearance = Appearance(
        name=profile.appearance.name,
        reason=profile.appearance.reason,
        location=profile.appearance.location,
        contact_info=profile.appearance.contact,
    )
    urls, auth = tsa_of(profile)
    level = SignatureLevel.B_B if profile.level == "B-B" else SignatureLevel.B_T
    return doc_jobs.SigningRequest(
        key=key_source(profile),
        appearance=appearance,
        level=level,
        tsa_urls=urls,
        tsa_auth=auth,
        downgrade_on_tsa_failure=profile.on_tsa_failure == "downgrade",
        trust_roots=tuple(profile.trust_roots),
    )


def preflight_profiles(rules: Rules) -> list[str]:
    """Problems with the signing profiles the rules use, found before the daemon touches Salesforce.

    Loads each key (so a wrong passphrase or a missing file shows at start, not on the first
    record) and checks the certificate's validity; messages name the profile and never a secret.
    """
    problems: list[str] = []
    for name in sorted({r.profile for r in rules.rules}):
        profile = rules.profiles[name]
        try:
            request = signing_request(profile)
            files = request.key.files() if isinstance(request.key, KeySpec) else ()
            for path in files:
                if not path.is_file():
                    raise SigningError(f"key file {path} does not exist")
            signer = load_signer(request.key)
            if signer.signing_cert is None:
                raise SigningError("the key source holds no certificate")
            check_certificate_validity(signer.signing_cert, datetime.now(UTC))
        except (PermanentFailure, SigningError, ValueError) as exc:
            problems.append(f"{rules.source}: signing profile {name!r}: {exc}")
    return problems


def _file_of(job: Job) -> tuple[str, str]:
    """(Title, PathOnClient) of the job's file. The name is allow-listed again here, so a job fetched by
    an older version (its name stored unfiltered) cannot poison the batch it is uploaded in."""
    title = job.file_title or Path(job.file_name or job.transaction_id).stem
    return title, file_name_for(title, job.transaction_id)


def shown_signature_query(sobject: str, record_id: str) -> str:
    """What the record shows of its signature: whether an adopted file's write-back is still owed, and
    since when a record signed before this outbox knew of it is signed."""
    return (f"SELECT Sign_Transaction_Id__c, Sign_Status__c, Signed_At__c FROM {sobject} "
            f"WHERE Id = {soql_quote(record_id)}")


def already_signed_note(signed_on: str | None, transaction_id: str) -> str:
    """What a record already signed shows (`Sign_Error__c`, the status stays `Signed`) when a stage change
    or a "Send for signature" asks for it again: the intake's answer and the fetch step's say the same."""
    return (f"Already signed on {signed_on or 'an earlier date'}, transaction {transaction_id}; this request "
            "(stage change or Send for Signature) signed nothing new. To sign a new version, use "
            "Send for Signature with the action Re-issue.")


def _claim(store: OutboxStore, *, now: float, limit: int, running: list[int]) -> list[Job]:
    return store.claim_due(now, limit, running)
