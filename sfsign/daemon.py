"""The supervisor: starts intake and workers in order, and stops them in the reverse order.

Start: outbox → authentication → REST → CPU pool → worker → stream. Stop (SIGTERM, SIGINT or the
`stop` event): intake first (no new jobs), then let in-flight steps finish up to the grace deadline
(the rest resume at their last persisted step on the next start), then close the pool, the clients
and the database. Nothing is acknowledged to Salesforce except through the replay id, which only
moves after the outbox commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from sfsign.config import Rules, Settings, read_secret
from sfsign.documents import jobs as doc_jobs
from sfsign.outbox import Outbox
from sfsign.salesforce.auth import AccessToken, AuthConfig, Authenticator
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, parse_event
from sfsign.salesforce.records import find_records_in_state
from sfsign.salesforce.rest import SalesforceRest, soql_id_list
from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient
from sfsign.triggers import SIGN_REQUEST_EVENT, decide_change, decide_current_state, decide_sign_request
from sfsign.worker import Worker, WorkerConfig

log = structlog.get_logger("sfsign.daemon")


def auth_config(settings: Settings) -> AuthConfig:
    passphrase = read_secret("SFSIGN_PRIVATE_KEY_PASSPHRASE")
    return AuthConfig(
        login_url=settings.login_url,
        flow=settings.auth_flow,
        consumer_key=settings.consumer_key,
        username=settings.username or None,
        private_key_file=settings.private_key_file,
        private_key_passphrase=passphrase,
        consumer_secret=settings.consumer_secret,
        password=settings.password,
        api_version=settings.api_version,
        ca_bundle=settings.ca_bundle,
    )


@dataclass
class Health:
    """What /readyz and `sfsign demo` need to know about a running daemon."""

    started_at: float = field(default_factory=time.time)
    authenticated: bool = False
    subscribed: bool = False
    events_received: int = 0
    last_event_at: float | None = None
    org_id: str | None = None
    instance_url: str | None = None


class Daemon:
    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.health = Health()
        self.outbox = Outbox(settings.data_dir / "outbox.sqlite")
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._token: AccessToken | None = None
        self.worker: Worker | None = None
        self.stream: StreamClient | None = None
        self.stopped_by: signal.Signals | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received; shutting down", signal=sig.name)
        self.stopped_by = sig
        self._stop.set()

    async def run(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.outbox.open()
        authenticator = Authenticator(auth_config(settings))
        rest: SalesforceRest | None = None
        pool: ProcessPoolExecutor | None = None
        tasks: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            token = await authenticator.token()
            self._token = token
            self.health.authenticated = True
            self.health.org_id = token.org_id
            self.health.instance_url = token.instance_url
            log.info("authenticated", org_id=token.org_id, instance_url=token.instance_url)
            rest = SalesforceRest(authenticator, api_version=settings.api_version)
            workers = settings.cpu_workers or os.cpu_count() or 2
            # spawn, not fork: the parent has threads (outbox, REST pool), and fork would copy their locks.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            templates = tuple(sorted({str(t) for t in self.rules.templates.values()}))
            warm_up = [loop.run_in_executor(pool, doc_jobs.warm_up, templates) for _ in range(workers)]
            self.worker = Worker(
                outbox=self.outbox,
                rest=rest,
                rules=self.rules,
                cpu_pool=pool,
                config=WorkerConfig(
                    artifacts_dir=settings.data_dir / "artifacts",
                    concurrency=settings.workers,
                    max_attempts=settings.max_attempts,
                    multi_currency=settings.multi_currency,
                ),
                instance_url=lambda: (authenticator.current or token).instance_url,
            )
            self.stream = StreamClient(
                authenticator,
                api_version=settings.api_version,
                channels=self.rules.channels(),
                replay_source=self.outbox.committed_replay_id,
            )
            await asyncio.gather(*warm_up)  # the first document should not pay for interpreter start-up
            tasks.append(asyncio.create_task(self.worker.run(self._stop), name="worker"))
            tasks.append(asyncio.create_task(self._intake(rest), name="intake"))
            tasks.append(asyncio.create_task(self._watch_stream(), name="stream-watch"))
            stop_wait = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stop.set()
            log.info("stopping: intake first")
            for task in tasks:
                if task.get_name() in ("intake", "stream-watch"):
                    task.cancel()
            if self.stream is not None:
                with contextlib.suppress(Exception):
                    await self.stream.aclose()
            if self.worker is not None:
                parked = await self.worker.drain(settings.shutdown_grace_s)
                if parked:
                    log.warning("in-flight jobs parked; they resume on next start", jobs=parked)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if rest is not None:
                await rest.close()
            await authenticator.aclose()
            await self.outbox.close()
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("stopped")

    # ------------------------------------------------------------------------------------ intake

    async def _intake(self, rest: SalesforceRest) -> None:
        assert self.stream is not None
        while not self._stop.is_set():
            try:
                async for message in self.stream.messages():
                    await self._handle(rest, message)
            except ReplayIdInvalid as exc:
                log.error(
                    "stored replay id is outside the retention window; subscribing from new events "
                    "and reconciling",
                    channel=exc.channel,
                    replay_id=exc.replay_id,
                )
                await self.outbox.reset_replay(exc.channel)
                self.stream.reset_replay(exc.channel)
                sobject = _channel_object(exc.channel)
                if sobject:
                    await self.reconcile(rest, [sobject])

    async def _watch_stream(self) -> None:
        """Keep `health` and `ready` in step with the stream (readiness for ops and the demo)."""
        assert self.stream is not None
        channels = set(self.stream.channels)
        while not self._stop.is_set():
            subscribed = self.stream.connected and channels <= set(self.stream.subscribed_replay)
            self.health.subscribed = subscribed
            if subscribed:
                self.ready.set()
            await asyncio.sleep(0.05)

    async def _handle(self, rest: SalesforceRest, message: dict[str, Any]) -> None:
        self.health.events_received += 1
        self.health.last_event_at = time.time()
        channel = str(message.get("channel", ""))
        try:
            event = parse_event(message)
        except MalformedEvent as exc:
            log.warning("malformed event skipped", channel=exc.channel or channel, replay_id=exc.replay_id,
                        reason=exc.reason)
            if exc.replay_id is not None:
                await self.outbox.commit_event(exc.channel or channel, exc.replay_id, [])
            return
        org_id = self._org_id()
        if isinstance(event, ChangeEvent):
            decision = decide_change(event, self.rules, org_id)
            for sobject, record_id in decision.reread:
                try:
                    values = await self._current_values(rest, sobject, [record_id])
                except SalesforceError as exc:
                    # The replay id must not advance past a gap we could not resolve: retry from here.
                    log.error("gap event: re-read failed; will reconcile", record_id=record_id, error=str(exc))
                    decision.reconcile.append(sobject)
                    continue
                for rid, row in values.items():
                    decision.jobs.extend(
                        decide_current_state(sobject, rid, row, self.rules, org_id, f"gap:{event.transaction_key}")
                    )
        elif isinstance(event, PlatformEvent) and event.name == SIGN_REQUEST_EVENT:
            decision = decide_sign_request(event, self.rules, org_id)
        else:
            log.info("event ignored", channel=channel, replay_id=getattr(event, "replay_id", None))
            decision = None
        jobs = decision.jobs if decision else []
        result = await self.outbox.commit_event(event.channel, event.replay_id, jobs)
        for job in result.created:
            log.info("job queued", transaction_id=job.transaction_id, record_id=job.record_id, rule=job.rule,
                     source=job.source)
        for dup, why in result.duplicates:
            log.info("duplicate trigger ignored", transaction_id=dup.transaction_id, record_id=dup.record_id,
                     reason=why)
        if decision:
            for why in decision.ignored:
                log.info("event not acted upon", channel=channel, replay_id=event.replay_id, reason=why)
            if decision.reconcile:
                await self.reconcile(rest, decision.reconcile)
        if result.created and self.worker is not None:
            self.worker.wake()

    def _org_id(self) -> str:
        if self._token is None or not self._token.org_id:
            raise RuntimeError("not authenticated")
        return self._token.org_id

    async def _current_values(
        self, rest: SalesforceRest, sobject: str, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        """The watched fields of records a gap event names: gap events carry no values."""
        fields = sorted({r.field for r in self.rules.for_object(sobject)} | {"Id", "Sign_Transaction_Id__c"})
        rows = await rest.query(f"SELECT {', '.join(fields)} FROM {sobject} WHERE Id IN {soql_id_list(ids)}")
        return {str(r["Id"]): r for r in rows}

    async def reconcile(
        self, rest: SalesforceRest, sobjects: list[str], since: datetime | None = None
    ) -> int:
        """Queue every record sitting in a trigger state without a transaction id.

        Fed through the same outbox and the same duplicate checks as events, so it can never
        double-sign a record that an event already queued.
        """
        created = 0
        org_id = self._org_id()
        for sobject in dict.fromkeys(sobjects):
            for rule in self.rules.for_object(sobject):
                ids = await find_records_in_state(rest, sobject, rule.field, rule.values, since=since)
                jobs = []
                for record_id in ids:
                    jobs.extend(
                        decide_current_state(
                            sobject, record_id, {rule.field: rule.values[0]}, self.rules, org_id,
                            f"reconcile:{record_id}",
                        )
                    )
                result = await self.outbox.commit_event(None, None, jobs)
                created += len(result.created)
        log.info("reconciliation done", objects=sobjects, jobs_created=created)
        if created and self.worker is not None:
            self.worker.wake()
        return created


def _channel_object(channel: str) -> str | None:
    if channel.startswith("/data/") and channel.endswith("ChangeEvent"):
        return channel.removeprefix("/data/").removesuffix("ChangeEvent")
    return None
