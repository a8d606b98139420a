"""The worker's one door to Salesforce: the batched calls of many jobs, and the single calls a step makes.

Each job walks its own states, but its fetch, upload and write-back join those of other jobs: the
three batchers (`sfsign.batching`) send one API call for many jobs. When a batch goes is decided from
what the running jobs are doing (`track`): at once when every job that could still join is waiting
(a lone document never waits); during a burst (more jobs running than CPU slots, or the API budget
tight), after the jobs stop arriving for `batch_settle_s`, or after the burst linger.

A lone record's write-back carries its step's outcome event (`writeback.OutcomeEvent`), inserted with the
update or not at all, and comes back typed (`writeback.Written`: the file's 069, its link, the event as
built and whether it was sent). Every write-back sends the outbox's pending audit events along (as many
as fit) when the daemon's audit flusher is not sending them at that moment (`audit_lock`), so the trail
rarely costs a call of its own.

Knobs (`WorkerConfig`): `batch_linger_s` (0.05 s, SFSIGN_BATCH_LINGER_S) and `batch_linger_burst_s`
(8 s, SFSIGN_BATCH_LINGER_BURST_S); while the org's daily API use is below `api_latency_share` (0.5,
SFSIGN_API_LATENCY_SHARE) a burst's fetches and uploads go when `early` says (a small first fetch, which
waits at most `batch_linger_burst_first_s`, 0.25 s, SFSIGN_BATCH_LINGER_BURST_FIRST_S, for its records; the
next ones as the pool runs out of work; the first upload at once, the second once it holds half of what is
left); `batch_settle_s` (0.25 s), `fetch_batch_max` (200),
`upload_batch_max` (100), `write_batch_max` (800), `cpu_slots` (what "a burst" is measured against),
`multi_currency`; the API governor's share (SFSIGN_API_BUDGET_SHARE) through `constrained`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from sfsign.batching import Batcher
from sfsign.config import Rules, SignersConfig
from sfsign.governor import ApiGovernor
from sfsign.ops.metrics import Metrics
from sfsign.outbox import Job, JobState, Outbox
from sfsign.salesforce.batch_calls import (
    Fetched,
    FetchKey,
    fetch_many,
    quick_retries,
    refused_as_a_whole,
    upload_many,
)
from sfsign.salesforce.composite import COLLECTION_LIMIT
from sfsign.salesforce.files import ContentVersionRef, NewFile
from sfsign.salesforce.record_fields import audit_records, shown_signature_query
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.writeback import (
    OutcomeEvent,
    SignedFile,
    WriteBack,
    WriteBackOutcome,
    Written,
    write_back_many,
)
from sfsign.signing.model import ResolvedSigner
from sfsign.signing.recipients import read_signers
from sfsign.worker_config import WorkerConfig

# Running jobs in these states may still join the fetch / upload / write-back batch.
_BEFORE_FETCH = frozenset({JobState.QUEUED})
_BEFORE_UPLOAD = frozenset({JobState.QUEUED, JobState.FETCHED, JobState.RENDERED, JobState.SIGNED,
                            JobState.LTV_PENDING, JobState.LTV_UPGRADED})
_BEFORE_WRITE = _BEFORE_UPLOAD | {JobState.UPLOADED, JobState.LTV_UPLOADED}
_BEFORE_SIGNED = frozenset({JobState.QUEUED, JobState.FETCHED, JobState.RENDERED})
_FETCHED = frozenset({JobState.FETCHED, JobState.RENDERED})  # fetched, not yet signed: the pool's work at hand
_FETCH = "fetch"
_WRITE_BACK_BURST_S = 1.0  # during a burst, the longest a write-back waits for its upload batch's others
_UPLOAD = "upload"
_WRITE_BACK = "write-back"


class SalesforceGateway:
    """Batchers and single calls, for jobs; `start` before the first job, `stop` after the last."""

    def __init__(
        self,
        *,
        rest: SalesforceRest,
        outbox: Outbox,
        config: WorkerConfig,
        rules: Callable[[], Rules],
        running: Callable[[], int],
        metrics: Metrics,
        governor: ApiGovernor | None = None,
    ) -> None:
        self.rest = rest
        self._outbox = outbox
        self._config = config
        self._rules = rules  # the rules in force: a batch reads the fields of one set throughout
        self._running = running  # how many jobs the worker runs
        self._metrics = metrics
        self._governor = governor
        self.audit_lock = asyncio.Lock()  # the write-back and the daemon's audit flusher never send a row twice
        self._state_of: dict[int, JobState] = {}  # what each running job is doing: when batches may go
        self._per_state: Counter[JobState] = Counter()  # the same, counted (read on every batcher wake-up)
        self._last_claim = 0.0
        self._burst_batches: Counter[str] = Counter()  # batches each batcher sent in the current burst
        self._burst_since: float | None = None  # when the current burst began (None: no burst)
        self._signed_in_burst = 0  # documents the pool signed since then: its pace, for `written_within`
        self._first_signed_at = 0.0  # when the first of them was (the pace counts from there)
        self._call_s: dict[str, float] = {}  # how long each batcher's last call took, in this burst
        self._uploaded = 0  # files of the last upload batch, until their write-back batch goes
        self._fetched: set[int] = set()  # jobs whose fetch came back, until their next step is tracked
        self._fetching: dict[str, int] = {}  # the job of each transaction waiting for its fetch
        self.fetcher: Batcher[FetchKey, Fetched] = self._batcher(
            _FETCH, self._fetch_batch, config.fetch_batch_max, _BEFORE_FETCH)
        self.uploader: Batcher[NewFile, str] = self._batcher(
            _UPLOAD, partial(upload_many, rest), min(config.upload_batch_max, COLLECTION_LIMIT), _BEFORE_UPLOAD)
        self.writer: Batcher[WriteBack, Written] = self._batcher(
            _WRITE_BACK, self.write_now, config.write_batch_max, _BEFORE_WRITE)
        self._batchers: list[Batcher[Any, Any]] = [self.fetcher, self.uploader, self.writer]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _batcher(self, name: str, handler: Any, max_size: int, upstream: frozenset[JobState]) -> Any:
        async def timed(items: list[Any]) -> Any:
            started = time.monotonic()
            try:
                results = await handler(items)
            finally:
                self.note_call(name, time.monotonic() - started)
            if name == _UPLOAD:
                self.note_uploaded(sum(1 for r in results if not isinstance(r, BaseException)))
            return results

        return Batcher(name, timed, max_size=max_size, linger_s=partial(self.linger_for, name),
                       waiting_for=lambda: self._count(upstream), on_batch=partial(self.note_batch, name),
                       settle_s=self._settle, split_on=refused_as_a_whole, early=partial(self.early, name))

    def note_batch(self, name: str, size: int) -> None:
        """Batcher `name` sent a call for `size` items: the metric, and the burst's count for `linger_for`."""
        self._metrics.batch_size.labels(name).observe(size)
        self._burst_batches[name] += 1
        if name == _WRITE_BACK:
            self._uploaded = 0

    def note_uploaded(self, files: int) -> None:
        """An upload batch came back with `files` uploaded: their write-backs go together (`early`)."""
        self._uploaded = files

    def note_call(self, name: str, seconds: float) -> None:
        """Batcher `name`'s call took `seconds`: what a record waits beyond the pool, for `written_within`."""
        self._call_s[name] = seconds

    # ------------------------------------------------------------------------------ when batches go

    def track(self, job_id: int, state: JobState | None) -> None:
        """The job now runs the step of `state` (None: it ended); batches waiting on it re-check."""
        self._fetched.discard(job_id)
        previous = self._state_of.pop(job_id, None)
        if previous is not None:
            self._per_state[previous] -= 1
            if (self._burst_since is not None and previous in _BEFORE_SIGNED and state is not None
                    and state not in _BEFORE_SIGNED):
                self._signed_in_burst += 1
                if self._signed_in_burst == 1:
                    self._first_signed_at = time.monotonic()
        if state is not None:
            self._state_of[job_id] = state
            self._per_state[state] += 1
        self.poke()

    def claimed(self) -> None:
        """Jobs were just claimed: during a burst, batches wait until jobs stop arriving for a moment."""
        self._last_claim = time.monotonic()

    def poke(self) -> None:
        for batcher in self._batchers:
            batcher.poke()

    def constrained(self) -> bool:
        """The API budget is tight (see governor.py); the gauge follows."""
        tight = self._governor is not None and self._governor.constrained()
        self._metrics.governor_constrained.set(1 if tight else 0)
        return tight

    def _count(self, states: frozenset[JobState]) -> int:
        return sum(self._per_state[s] for s in states)

    def _settle(self) -> float:
        """During a burst, wait until jobs stop arriving for a moment before a batch counts as complete."""
        if self._running() <= self._config.cpu_slots:
            return 0.0
        return max(0.0, self._last_claim + self._config.batch_settle_s - time.monotonic())

    def _in_burst(self) -> bool:
        """More jobs run than the CPU signs at once. When a burst ends its counts go, so the next one
        starts fast again."""
        if self._running() <= self._config.cpu_slots:
            if self._burst_since is not None or self._burst_batches:
                self._burst_batches.clear()
                self._burst_since, self._signed_in_burst = None, 0
                self._call_s.clear()
                self._uploaded = 0
            return False
        if self._burst_since is None:
            self._burst_since = time.monotonic()
        return True

    def linger_for(self, name: str) -> float:
        """How long batcher `name`'s oldest item may wait. Short while documents trickle in. During a burst
        (more jobs than the CPU signs at once) it depends on the org's API budget: below
        `api_latency_share` of the daily allocation `early` sends the fetches and uploads (the burst's first
        fetch waits at most `batch_linger_burst_first_s` for its records, any other batch at most the long
        burst linger), and write-backs follow the uploads: a returning upload batch is written back as one.
        Above that share, or when the governor says the budget is tight, every batch waits the long burst
        linger (bigger batches, fewer calls)."""
        config = self._config
        tight = self.constrained()
        if not self._in_burst() and not tight:
            return config.batch_linger_s
        if tight or not self._budget_allows_latency():
            return config.batch_linger_burst_s
        if name == _WRITE_BACK:
            return _WRITE_BACK_BURST_S  # at the latest: `early` sends an upload batch's write-backs as one
        if name == _FETCH and self._burst_batches[name] == 0:
            return config.batch_linger_burst_first_s
        return config.batch_linger_burst_s

    def early(self, name: str, size: int, waiting_for: int) -> bool | None:
        """Whether batcher `name`'s `size` items go now (True), wait for their linger (False), or follow the
        batcher's own rules (None). While the budget allows latency, so that a 100-record burst costs about
        8 to 10 calls and a rep sees records turn Signed from the first second:
        - a fetch goes at once while the pool has nothing fetched at hand (a lone document never waits; a
          burst's first records start the pool while the rest still arrives). Otherwise, outside a burst
          it lingers its short linger (the jobs of a burst's first moment, claimed one by one before it
          counts as a burst, share a call); during a burst a few (less than four times the slots) wait
          while the pool has twice its slots' worth at hand (the jobs arriving meanwhile join them, rather
          than costing a call each), else it follows the batcher's rules (once the arrivals settle);
        - during a burst, the first upload goes at once, with the first document signed, and the second
          once it holds as many documents as are still to come (`waiting_for` counts the jobs upstream,
          these included): half the burst shows Signed when the pool has signed half of it, and the rest
          follows in one more round (or rounds of `upload_batch_max`);
        - during a burst, the write-backs of an upload batch go as one call once all its uploaded files'
          jobs have joined (each first records its upload in the outbox, one after the other: on a busy
          machine that takes a moment), at the latest after `_WRITE_BACK_BURST_S`."""
        if self.constrained() or not self._budget_allows_latency():
            return None
        burst = self._in_burst()
        if name == _FETCH:
            slots, at_hand = self._config.cpu_slots, self._count(_FETCHED) + len(self._fetched)
            if at_hand == 0:
                return True if burst else None
            if not burst:
                return False
            if at_hand >= 2 * slots and size < 4 * slots:
                return False  # a few late arrivals: they wait for more while the pool has work
            return None
        if name == _UPLOAD and burst:
            sent = self._burst_batches[name]
            return True if sent == 0 or (sent == 1 and 2 * size >= waiting_for) else None
        if name == _WRITE_BACK and burst:
            return True if self._uploaded and size >= self._uploaded else None
        return None

    def written_within(self, horizon_s: float) -> bool:
        """Whether every running job of the burst will have written its record within `horizon_s`, by the
        pace the pool has kept since it signed the burst's first document and the last upload and
        write-back calls' durations.
        False while that is not known yet (no such call yet, fewer documents signed than CPU slots)."""
        if not self._in_burst() or self._burst_since is None or self._signed_in_burst < self._config.cpu_slots:
            return False
        calls = [self._call_s.get(_UPLOAD), self._call_s.get(_WRITE_BACK)]
        if None in calls:
            return False
        elapsed = time.monotonic() - self._first_signed_at
        pace = (self._signed_in_burst - 1) / elapsed if elapsed > 0 else 0.0
        if pace <= 0:
            return False
        return self._count(_BEFORE_SIGNED) / pace + sum(c for c in calls if c is not None) <= horizon_s

    def _budget_allows_latency(self) -> bool:
        share = self._governor.share() if self._governor is not None else None
        return share is None or share < self._config.api_latency_share

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(b.run(self._stop), name=f"batcher-{b.name}") for b in self._batchers]

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------------------------- batched calls

    async def fetch(self, job: Job) -> Fetched:
        self._fetching[job.transaction_id] = job.id
        try:
            return await self.fetcher.submit((job.sobject, job.record_id, job.transaction_id))
        finally:
            self._fetching.pop(job.transaction_id, None)

    async def upload(self, file: NewFile) -> str:
        return await self.uploader.submit(file)

    async def write(self, job: Job, fields: dict[str, Any], event: OutcomeEvent, *,
                    file: SignedFile | None = None) -> Written:
        """The job's record write-back, showing `file` (when given), with its outcome event."""
        return await self.writer.submit(WriteBack(job.sobject, job.record_id, fields, file=file, event=event))

    async def _fetch_batch(self, keys: list[FetchKey]) -> list[Fetched]:
        rules = self._rules()
        extras = {sobject: rules.fields_for(sobject) for sobject, _r, _tx in keys}
        fetched = await fetch_many(self.rest, keys, extras=extras, multi_currency=self._config.multi_currency)
        # At hand for the pool from now on, though their jobs have yet to take the result and move on:
        # the fetcher must not take the moment in between for an idle pool (`early`).
        self._fetched.update(job_id for _s, _r, tx in keys if (job_id := self._fetching.get(tx)) is not None)
        return fetched

    async def write_now(self, items: list[WriteBack]) -> list[Written | BaseException]:
        """Write the records back in one call now, with pending audit events along when the flusher is not
        busy (the write-back batcher's handler, and the Pending notes' own call)."""
        rows: list[dict[str, Any]] = []
        locked = not self.audit_lock.locked()
        if locked:
            await self.audit_lock.acquire()
        try:
            if locked:
                rows = await self._outbox.pending_audit()
            outcome: WriteBackOutcome = await quick_retries(write_back_many, self.rest, items,
                                                            audit_records(rows))
            if rows and outcome.audit_results:
                sent = [r["id"] for r, ok in zip(rows, outcome.audit_results, strict=False) if ok is True]
                await self._outbox.mark_audit(sent, "sent")
        finally:
            if locked:
                self.audit_lock.release()
        return [*outcome.records]

    # ----------------------------------------------------------------------------------- single calls

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        """One record's fields, with quick retries."""
        await quick_retries(self.rest.update, sobject, record_id, fields)

    async def update_once(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        """One plain update, no retries: for a note whose failure must not delay the job."""
        await self.rest.update(sobject, record_id, fields)

    async def shown_signature(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """What the record shows of its signature (`record_fields.shown_signature_query`)."""
        rows = await quick_retries(self.rest.query, shown_signature_query(sobject, record_id))
        return dict(rows[0]) if rows else None

    async def read_signers(self, signers: SignersConfig, sobject: str, record_id: str) -> list[ResolvedSigner]:
        """Who signs the record (customer signing): the contact roles, quote and users the rule names."""
        return await quick_retries(read_signers, self.rest, signers, sobject, record_id)

    async def find_file(self, transaction_id: str) -> ContentVersionRef | None:
        return await quick_retries(self.rest.find_content_version, transaction_id)

    async def find_version(self, content_document_id: str, md5: str) -> str | None:
        return await quick_retries(self.rest.find_version_by_checksum, content_document_id, md5)

    async def download(self, content_version_id: str | None) -> bytes:
        return await quick_retries(self.rest.download_version_data, content_version_id)
