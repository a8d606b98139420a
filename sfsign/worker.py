"""The job state machine: queued → fetched → rendered → signed → uploaded → done (a rule with signers:
`sfsign.envelope_steps`).

For profiles at B-LT or B-LTA the record shows `Signed` (at B-T) after `uploaded`, and the job goes
on in the background: ltv_pending → ltv_upgraded → ltv_uploaded → done adds the validation data
(and the document timestamp) as a new version of the same Salesforce File.

Each step (`sfsign.steps`) reads what the previous step persisted (outbox row and artifact files) and
persists its own result before the next begins, so a crash at any point resumes at the step that was
interrupted and never signs twice (a second signature would carry another time and hash). Failures are
classified: transient ones are retried with capped exponential backoff and jitter for as long as the
retry window lasts (`retry_for_s`, 72 h by default, counted from the first failure since the job last
moved on), then the job is `dead` and its record says what a person must do; permanent ones write the
reason on the record (`Sign_Status__c = Error`) and park the job as `error` until `sfsign retry`. A job
whose file may already be in Salesforce (uploaded, or its upload in doubt) is never given up: it
retries its write-back until Salesforce takes it, so an outage never leaves a file without its record.

This module holds the dispatcher (claims due jobs, a bounded number at once), the step order, the
retries and the give-up, and the drain on shutdown. Salesforce calls go through `sfsign.gateway`,
`Pending` notes for waiting jobs through `sfsign.pending`.

Knobs (`WorkerConfig`, `sfsign.worker_config`): `concurrency` (SFSIGN_WORKERS), `poll_interval_s`,
`retry_for_s` (SFSIGN_RETRY_FOR_H), `backoff_base_s` (SFSIGN_RETRY_BASE_S), `backoff_cap_s`,
`long_backoff_s` (REQUEST_LIMIT_EXCEEDED), `alert_after_attempts`; the other modules list theirs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial

import structlog

from sfsign.aio import Wakeup
from sfsign.artifacts import Artifacts
from sfsign.config import Rules
from sfsign.envelope_steps import EnvelopeSteps
from sfsign.failures import PermanentFailure, TransientFailure
from sfsign.gateway import SalesforceGateway
from sfsign.governor import ApiGovernor
from sfsign.ops.durations import human_age
from sfsign.ops.metrics import Metrics
from sfsign.outbox import Job, JobState, Outbox
from sfsign.pending import PendingNotes
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.record_fields import error_fields, pending_fields, upgrade_failed_fields
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import Clock
from sfsign.steps import Steps
from sfsign.worker_config import WorkerConfig

log = structlog.get_logger("sfsign.worker")

# States in which the job's file is (or may be) in Salesforce: the retry window never ends them, or an
# outage could leave an uploaded file that its record does not show.
_FILE_IN_SALESFORCE = frozenset({JobState.UPLOADED, JobState.LTV_UPLOADED})


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
        clock: Clock | None = None,
    ) -> None:
        self.outbox = outbox
        self.rules = rules
        self.config = config
        self.metrics = metrics or Metrics()
        self._wake = Wakeup()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._claimed: dict[int, Job] = {}  # each running job as it was claimed
        self.gateway = SalesforceGateway(
            rest=rest, outbox=outbox, config=config, rules=lambda: self.rules, running=lambda: len(self._running),
            metrics=self.metrics, governor=governor,
        )
        self.pending = PendingNotes(
            outbox=outbox, write=self.gateway.write_now, after_s=config.pending_after_s,
            batch_max=config.write_batch_max, claimed=self._claimed.values,
            workers_busy=lambda: len(self._running) >= config.concurrency,
            cpu_busy=lambda: len(self._running) > config.cpu_slots, constrained=self.gateway.constrained,
            announced=self._wake.set, soon=self.gateway.written_within,
        )
        self._announcer: asyncio.Task[None] | None = None
        steps = Steps(outbox=outbox, gateway=self.gateway, pending=self.pending,
                      artifacts=Artifacts(config.artifacts_dir, config.artifact_grace_s), cpu_pool=cpu_pool,
                      config=config, metrics=self.metrics, instance_url=instance_url)
        # Jobs whose rule has signers take their own steps where theirs differ (`EnvelopeSteps.step_for`).
        self._envelope_steps = EnvelopeSteps(steps, config.link_keys, config.message_domain, clock)
        self._steps: dict[JobState, Callable[[Job, Rules], Awaitable[Job]]] = {
            JobState.QUEUED: steps.fetch,
            JobState.FETCHED: steps.render_and_sign,
            JobState.RENDERED: steps.sign,
            JobState.SIGNED: steps.upload,
            JobState.UPLOADED: steps.write_back,
            JobState.LTV_PENDING: steps.ltv_upgrade,
            JobState.LTV_UPGRADED: steps.ltv_upload,
            JobState.LTV_UPLOADED: steps.ltv_write_back,
            JobState.SIGNATURES_DUE: self._envelope_steps.apply_signatures,
        }

    @property
    def audit_lock(self) -> asyncio.Lock:
        """Held while audit rows go to Salesforce: the write-back and the daemon's audit flusher never send a
        row twice. The daemon may hand in the flusher's own lock; the write-back then takes that one."""
        return self.gateway.audit_lock

    @audit_lock.setter
    def audit_lock(self, lock: asyncio.Lock) -> None:
        self.gateway.audit_lock = lock

    # ------------------------------------------------------------------------------- dispatching

    def wake(self) -> None:
        """Called by intake after it committed new jobs."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; in-flight jobs (and the batchers they wait on) are left to `drain`."""
        self.gateway.start()
        if self._announcer is None:
            self._announcer = asyncio.create_task(self.pending.run(stop, self.config.poll_interval_s),
                                                  name="pending-announcer")
        stopping = self._wake.follow(stop)
        try:
            await self._dispatch(stop)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            free = self.config.concurrency - len(self._running)
            if free > 0:
                free -= await self._claim(free)
            timeout = self.config.poll_interval_s
            if free > 0:
                # Everything due is running now: when does the next job fall due? Jobs already running
                # are due too (their next_attempt_at has passed); counting them made this loop spin, two
                # outbox queries per turn, for as long as any job ran. Jobs being announced are claimed
                # once their Pending write is through (it wakes this loop). With no slot free there is
                # nothing to ask: a job that finishes wakes the loop.
                next_due = await self.outbox.next_due_at([*self._running, *self.pending.announcing])
                if next_due is not None:
                    timeout = min(timeout, max(0.0, next_due - time.time()))
            if free <= 0 or timeout > 0:
                await self._wake.wait(max(timeout, 0.01))

    async def _claim(self, free: int) -> int:
        """Claim up to `free` due jobs and start them, never one whose Pending write is in flight; return
        how many were claimed."""
        async with self.pending.claim_lock:
            jobs = await self.outbox.claim_due(time.time(), free, [*self._running, *self.pending.announcing])
            if jobs:
                self.gateway.claimed()
            for job in jobs:
                task = asyncio.create_task(self._process(job), name=f"job-{job.transaction_id}")
                self._running[job.id] = task
                self._claimed[job.id] = job
                task.add_done_callback(partial(self._finished, job.id))
        return len(jobs)

    def _finished(self, job_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._claimed.pop(job_id, None)
        self.pending.forget(job_id)
        self.gateway.track(job_id, None)
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
        await self.gateway.stop()
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
                    self.gateway.track(job.id, job.state)
                    step = self._envelope_steps.step_for(job) or self._steps[job.state]
                    started = time.perf_counter()
                    before = job.state
                    job = await step(job, rules)
                    if job.failing_since is not None and job.state is not before:
                        job = await self.outbox.reset_retry_window(job)  # it moved on: a new window
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
            current = await self.outbox.get(job.id)
            # An envelope job whose final PDF is uploaded (its certificate not yet) has its file in Salesforce too.
            uploaded = current.envelope_sent_at is not None and current.content_version_id is not None
            if current.state not in _FILE_IN_SALESFORCE and not current.upload_uncertain and not uploaded:
                if await self._give_up(current, attempts, now - failing_since, reason, code):
                    return
        delay = self.config.long_backoff_s if long_backoff else min(
            self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (min(attempts, 64) - 1)
        )
        delay = delay * (0.5 + random.random() / 2)  # jitter, not crypto
        level = log.error if attempts >= self.config.alert_after_attempts else log.warning
        level("step failed; will retry", attempts=attempts, retry_in_s=round(delay, 1), error_code=code,
              reason=reason)
        await self.outbox.schedule_retry(job, now + delay, reason, code, attempts=attempts,
                                         failing_since=failing_since)
        await self._show_pending(job, f"retrying: {reason}")

    async def _show_pending(self, job: Job, note: str) -> None:
        """A retrying job's record shows `Pending` and why it waits, so the rep is never left guessing. Only
        before the record shows the signed document; a note, so a failure to write it is logged and never
        fails or delays the job. One plain update, no in-step retries (Salesforce may be what fails)."""
        if job.signed_visible_at is not None or job.envelope_sent_at is not None:
            return  # the record shows the signature, or the envelope's state (the envelope mirror writes it)
        await self.pending.before_record_write(job.id)
        try:
            await self.gateway.update_once(job.sobject, job.record_id, pending_fields(job.transaction_id, note))
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
        await self.outbox.mark_dead(job, attempts=attempts, message=message, reason=reason, code=code)
        return True

    async def _fail_permanently(self, job: Job, reason: str, code: str) -> None:
        log.error("job failed permanently", error_code=code, reason=reason)
        self.metrics.errored_jobs.labels(code).inc()
        job = await self.outbox.note_failure(job, reason, code)
        try:
            await self._write_error(job, reason)
        except SalesforceError as exc:
            if not exc.transient:
                log.error("could not write the error on the record", error_code=exc.error_code)
            else:
                # The record must show the error: keep the job active so the report is retried.
                await self._schedule_retry(job, f"{reason} (not yet reported on the record: {exc})", code, False)
                return
        await self.outbox.mark_error(job, reason, code)

    async def _write_error(self, job: Job, reason: str) -> None:
        await self.pending.before_record_write(job.id)
        if job.signed_visible_at:
            fields = upgrade_failed_fields(job.level, reason)
        else:
            fields = error_fields(job.transaction_id, reason)
        await self.gateway.update(job.sobject, job.record_id, fields)
