"""The supervisor: starts intake and workers in order, and stops them in the reverse order.

Start: ops endpoint → outbox → authentication → REST → CPU pool → worker → stream. Stop (SIGTERM,
SIGINT or the `stop` event): intake first (no new jobs), then let in-flight steps finish up to the
grace deadline (the rest resume at their last persisted step on the next start), then close the pool,
the clients and the database, and the ops endpoint last. SIGHUP reloads the rules file (`reload`).
Nothing is acknowledged to Salesforce except through the replay id, which only moves after the outbox
commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from sfsign.aio import wait_any
from sfsign.config import ConfigError, Rules, Settings, load_rules, read_secret
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.sign import load_signer
from sfsign.governor import ApiGovernor
from sfsign.ops.api_usage import record_api_usage
from sfsign.ops.http import OpsServer, Readiness
from sfsign.ops.metrics import CertificateExpiry, Metrics, ScrapeSources, take_snapshot
from sfsign.ops.retention import purge_loop
from sfsign.outbox import REISSUE_SOURCE, AuditEvent, NewJob, Outbox, OutboxStore, SignedDocument, audit_time
from sfsign.private_files import private_dir
from sfsign.profiles import preflight_profiles, signing_request
from sfsign.salesforce.auth import AccessToken, AuthConfig, Authenticator
from sfsign.salesforce.errors import AuthError, SalesforceError
from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, parse_event
from sfsign.salesforce.record_fields import already_signed_note
from sfsign.salesforce.records import record_type_filter
from sfsign.salesforce.rest import (
    SalesforceRest,
    soql_datetime,
    soql_id_list,
    soql_quote,
    validate_api_name,
    validate_field_path,
)
from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient
from sfsign.triggers import SIGN_REQUEST_EVENT, decide_change, decide_current_state, decide_sign_request
from sfsign.worker import (
    Worker,
    WorkerConfig,
    audit_records,
)

if TYPE_CHECKING:
    from sfsign.check import Check

log = structlog.get_logger("sfsign.daemon")

AUDIT_ROWS_PER_CALL = 1000
RECONCILE_PREFIX = "reconcile:"
FIRST_SUBSCRIBED_KEY = "first_subscribed_at"
OPS_PROBE_KEY = "ops_write_probe"
OUTBOX_PROBE_TIMEOUT_S = 2.0
CERTIFICATE_REFRESH_S = 3600.0
# The periodic reconciliation leaves a record this long (at most) to the stream before it counts its
# trigger as lost: an event normally arrives within seconds, and one that does comes with who and when.
PERIODIC_RECONCILE_GRACE_S = 120.0


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
    # channel -> commit time (epoch s) of the last event received: the replay lag gauge
    last_event_commit: dict[str, float] = field(default_factory=dict)
    # The event intake is working on while it fails: since when, which one, why (None while none fails)
    intake_failing_since: float | None = None
    intake_failing_event: str | None = None
    intake_last_error: str | None = None


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
        self.authenticator: Authenticator | None = None
        self.metrics = Metrics()
        self.governor = ApiGovernor(
            lambda: self._rest.api_usage if self._rest is not None else None, settings.api_budget_share
        )
        self._reconcile_wake = asyncio.Event()
        self.certificates = CertificateExpiry()
        self.ops_server: OpsServer | None = None
        self._rest: SalesforceRest | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def ops_port(self) -> int | None:
        """The port the ops endpoint is bound to (tests use SFSIGN_OPS_PORT=0); None when it is off."""
        return self.ops_server.port if self.ops_server is not None else None

    def request_stop(self) -> None:
        self._stop.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received; shutting down", signal=sig.name)
        self.stopped_by = sig
        self._stop.set()

    async def run(self) -> None:
        """Serve the ops endpoint first and stop it last, so /healthz answers during start-up and
        shutdown, and /readyz tells why the daemon is not ready yet (or any more)."""
        private_dir(self.settings.data_dir)
        if self.settings.ops_port >= 0:
            self.ops_server = OpsServer(
                self.settings.ops_host, self.settings.ops_port, readiness=self.readiness, metrics=self.metrics_text
            )
            await self.ops_server.start()
        try:
            await self._run()
        finally:
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            if self.ops_server is not None:
                await self.ops_server.stop()

    async def _run(self) -> None:
        settings = self.settings
        await self.outbox.open()
        authenticator = self.authenticator = Authenticator(auth_config(settings))
        rest: SalesforceRest | None = None
        pool: ProcessPoolExecutor | None = None
        tasks: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
            installed.append(signal.SIGHUP)
        try:
            token = await self._first_login(authenticator)
            if token is None:
                return  # stopped while Salesforce was unreachable
            self._token = token
            self.health.authenticated = True
            self.health.org_id = token.org_id
            self.health.instance_url = token.instance_url
            log.info("authenticated", org_id=token.org_id, instance_url=token.instance_url)
            rest = self._rest = SalesforceRest(authenticator, api_version=settings.api_version)
            # Before subscribing: a rule on a field or value this org lacks would never fire. The same
            # findings as `sfsign check`, refused with its words (exit code 3).
            from sfsign.check import refuse_on_failures  # it imports the renderer

            findings = await self._startup_rule_check(rest)
            if findings is None:
                return  # stopped while Salesforce was unavailable
            refuse_on_failures(findings)
            workers = settings.cpu_workers or os.cpu_count() or 2
            # spawn, not fork: the parent has threads (outbox, REST pool), and fork would copy their locks.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            templates = tuple(sorted({str(t) for t in self.rules.templates.values()}))
            fields = self.rules.template_fields()
            warm_up = [loop.run_in_executor(pool, doc_jobs.warm_up, templates, fields) for _ in range(workers)]
            self.worker = Worker(
                outbox=self.outbox,
                rest=rest,
                rules=self.rules,
                cpu_pool=pool,
                config=WorkerConfig(
                    artifacts_dir=settings.data_dir / "artifacts",
                    concurrency=settings.workers,
                    cpu_slots=2 * workers,
                    batch_linger_s=settings.batch_linger_s,
                    batch_linger_burst_s=settings.batch_linger_burst_s,
                    pending_after_s=settings.pending_after_s,
                    retry_for_s=settings.retry_for_h * 3600,
                    backoff_base_s=settings.retry_base_s,
                    backoff_cap_s=settings.retry_cap_s,
                    multi_currency=settings.multi_currency,
                    ltv_delay_s=settings.ltv_delay_s,
                    artifact_grace_s=settings.artifact_grace_s,
                ),
                instance_url=lambda: (authenticator.current or token).instance_url,
                metrics=self.metrics,
                governor=self.governor,
            )
            self.stream = StreamClient(
                authenticator,
                api_version=settings.api_version,
                channels=self.rules.channels(),
                replay_source=self.outbox.committed_replay_id,
                # A "Send for signature" click carries no state a reconciliation could find: without a
                # position, read every retained event (72 h); their EventUuid makes a replay a no-op.
                replay_all=[c for c in self.rules.channels() if c.startswith("/event/")],
                long_poll_margin_s=settings.stream_long_poll_margin_s,
                backoff_base_s=settings.stream_backoff_base_s,
                backoff_cap_s=settings.stream_backoff_cap_s,
            )
            await self._reconcile_channels_without_position()
            tasks.append(asyncio.create_task(self._intake(rest), name="intake"))
            tasks.append(asyncio.create_task(self._watch_stream(), name="stream-watch"))
            tasks.append(asyncio.create_task(self._reconciler(rest), name="reconciler"))
            if settings.reconcile_interval_s > 0:
                tasks.append(asyncio.create_task(self._periodic_reconciler(rest), name="periodic-reconcile"))
            tasks.append(asyncio.create_task(self._audit_flusher(rest), name="audit"))
            if settings.ltv_refresh_interval_h > 0:
                tasks.append(asyncio.create_task(self._archive_scheduler(rest), name="ltv-refresh"))
            tasks.append(asyncio.create_task(self.worker.run(self._stop), name="worker"))
            tasks.append(asyncio.create_task(self._certificate_watch(), name="certificates"))
            tasks.append(asyncio.create_task(purge_loop(self.outbox, settings, self._stop), name="retention"))
            tasks.append(asyncio.create_task(
                record_api_usage(self.outbox, lambda: rest.api_usage if rest is not None else None, self._stop),
                name="api-usage",
            ))
            # Renders queue behind the warm-up in the pool, so the first document does not pay for
            # interpreter and template start-up twice; intake and fetches proceed meanwhile.
            for problem in sorted({p for found in await asyncio.gather(*warm_up) for p in found}):
                log.error("a template does not render sample data; its records will get Error", problem=problem)
            stop_wait = asyncio.create_task(self._stop.wait(), name="stop")
            tasks.append(stop_wait)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stop.set()
            log.info("stopping: intake first")
            for task in tasks:
                if task.get_name() in ("intake", "stream-watch", "reconciler", "periodic-reconcile", "audit",
                                       "ltv-refresh", "retention", "api-usage", "certificates"):
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
            self._rest = None
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("stopped")

    async def _first_login(self, authenticator: Authenticator) -> AccessToken | None:
        """Log in, waiting out transient failures (network, 5xx); a refused login ends the daemon."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                return await authenticator.token()
            except AuthError as exc:
                if not exc.transient:
                    raise
                log.error("cannot reach Salesforce to log in; retrying", error=str(exc), retry_in_s=delay)
            await wait_any(self._stop, within_s=delay)
            delay = min(delay * 2, 60.0)
        return None

    async def _startup_rule_check(self, rest: SalesforceRest) -> list[Check] | None:
        """The rules against the org, waiting out an outage (a 503 at start says nothing about the rules, and
        refusing to start on it would turn a Salesforce blip into a crash loop); only real findings refuse."""
        from sfsign.check import check_rules  # it imports the renderer

        delay = 1.0
        while not self._stop.is_set():
            try:
                return await check_rules(rest, self.rules)
            except SalesforceError as exc:
                if not exc.transient:
                    raise
                log.error("cannot check the rules against Salesforce; retrying", error=str(exc), retry_in_s=delay)
            await wait_any(self._stop, within_s=delay)
            delay = min(delay * 2, 60.0)
        return None

    # ------------------------------------------------------------------------- ops: readiness, metrics

    async def readiness(self) -> Readiness:
        """Authenticated, subscribed to every channel, and the outbox takes a write right now."""
        reasons: list[str] = []
        if self._stop.is_set():
            reasons.append("stopping")
        if not self.health.authenticated:
            reasons.append("not authenticated with Salesforce")
        if not self.health.subscribed:
            reasons.append("not subscribed to every streaming channel")
        writable = True
        try:
            await asyncio.wait_for(self.outbox.call(_probe_write), OUTBOX_PROBE_TIMEOUT_S)
        except TimeoutError:
            writable = False
            reasons.append(f"the outbox did not take a write within {OUTBOX_PROBE_TIMEOUT_S:g} s")
        except Exception as exc:
            writable = False
            reasons.append(f"the outbox is not writable: {type(exc).__name__}: {exc}")
        stalled = self._intake_stalled_s()
        intake_moving = stalled is None or stalled < self.settings.intake_stuck_after_s
        if not intake_moving:
            reasons.append(
                f"intake stuck: the event {self.health.intake_failing_event} has been failing for {stalled:.0f} s "
                f"and the replay id does not move ({self.health.intake_last_error})"
            )
        checks = {"authenticated": self.health.authenticated, "subscribed": self.health.subscribed,
                  "outbox_writable": writable, "intake_moving": intake_moving}
        return Readiness(reasons=tuple(reasons), checks=checks)

    def _intake_stalled_s(self) -> float | None:
        since = self.health.intake_failing_since
        return None if since is None else max(0.0, time.time() - since)

    async def metrics_text(self) -> bytes:
        async def ready() -> bool:
            return (await self.readiness()).ready

        sources = ScrapeSources(
            outbox=self.outbox,
            api_usage=lambda: self._rest.api_usage if self._rest is not None else None,
            last_event_commit=lambda: self.health.last_event_commit,
            certificates=self.certificates,
            ready=ready,
            intake_failing_since=lambda: self.health.intake_failing_since,
        )
        return self.metrics.render(await take_snapshot(sources))

    async def _refresh_certificates_safely(self, rules: Rules) -> None:
        try:
            loop = asyncio.get_running_loop()
            self.certificates.set(await loop.run_in_executor(None, certificate_not_after, rules))
        except Exception as exc:  # only the expiry gauge is affected: never stop the daemon for it
            log.warning("could not read the signing certificates' expiry", error=f"{type(exc).__name__}: {exc}")

    async def _certificate_watch(self) -> None:
        """Re-read the certificates hourly: a key file replaced without SIGHUP still shows its new expiry
        (load_signer reloads a file whose mtime changed)."""
        while not self._stop.is_set():
            await self._refresh_certificates_safely(self.rules)
            await wait_any(self._stop, within_s=CERTIFICATE_REFRESH_S)

    # ------------------------------------------------------------------------------------ reload

    def _on_reload_signal(self) -> None:
        log.info("signal received; reloading the rules", signal="SIGHUP")
        self.request_reload()

    def request_reload(self) -> asyncio.Task[bool]:
        """Reload in the background (SIGHUP); the task's result says whether the new rules were applied."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def reload(self) -> bool:
        """Re-read the rules file and check its signing profiles; apply it only if both succeed.

        The swap is two assignments with no `await` between them, so the next job the worker claims
        sees the new rules while a job already in flight keeps the rules it was claimed with
        (Worker._process). Templates are read by Typst at every render and keys are reloaded when their
        file changes, so new rules need nothing else. Never raises: invalid rules are refused, logged
        with their file:line message and counted, and the old rules stay in force.
        """
        async with self._reload_lock:
            path = self.settings.rules_file
            loop = asyncio.get_running_loop()
            try:
                rules = await loop.run_in_executor(None, load_rules, path)
                problems = await loop.run_in_executor(None, preflight_profiles, rules)
                if not problems and self._rest is not None:
                    from sfsign.check import check_rules

                    problems = [c.detail for c in await check_rules(self._rest, rules) if c.ok is False]
                if problems:
                    raise ConfigError("\n".join(problems))
            except Exception as exc:
                self.metrics.config_reload_failures.inc()
                error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                log.error("rules reload refused; the previous rules stay in force", rules_file=str(path), error=error)
                return False
            self.rules = rules
            if self.worker is not None:
                self.worker.rules = rules
            self.metrics.config_reloads.inc()
            log.info("rules reloaded; the next job uses them", rules_file=str(path),
                     rules=[r.name for r in rules.rules])
            if self.stream is not None:
                missing = sorted(set(rules.channels()) - set(self.stream.channels))
                if missing:
                    log.warning("the new rules need streaming channels this process is not subscribed to; "
                                "restart sfsign to subscribe (until then their records are not signed)",
                                channels=missing)
            await self._refresh_certificates_safely(rules)
            return True

    # ------------------------------------------------------------------------------------ intake

    async def _intake(self, rest: SalesforceRest) -> None:
        assert self.stream is not None
        while not self._stop.is_set():
            try:
                async for message in self.stream.messages():
                    if not await self._handle_until_done(rest, message):
                        return  # stopping: the event was not committed and is replayed on the next start
            except ReplayIdInvalid as exc:
                log.error(
                    "stored replay id is outside the retention window; subscribing from new events "
                    "and reconciling",
                    channel=exc.channel,
                    replay_id=exc.replay_id,
                )
                sobject = _channel_object(exc.channel)
                if sobject:
                    await self.request_reconcile([sobject])  # persisted before the position is dropped
                await self.outbox.reset_replay(exc.channel)
                self.stream.reset_replay(exc.channel)

    async def _handle_until_done(self, rest: SalesforceRest, message: dict[str, Any]) -> bool:
        """Handle one event, retrying with backoff while it fails; park it when it keeps failing while
        Salesforce answers.

        The stream is not read meanwhile, so events stay in order and the replay id never moves past an
        event that was not handled. A failure counts as an attempt only when it is the event's own: a
        permanent error, a bug, or a transient Salesforce error while a probe call (`/limits`) shows that
        Salesforce does answer. An outage (the probe fails too) and a busy outbox are waited out without
        counting, so they can never park good events. After `intake_max_attempts` counted attempts the
        event is parked (kept with its payload and reason), its objects are reconciled, and the replay id
        moves past it. Returns False if the daemon is stopping.
        """
        delay = 0.5
        attempts = 0
        cause = ""  # the last failure of the event's own handling (not of parking it)
        try:
            while not self._stop.is_set():
                try:
                    if attempts >= self.settings.intake_max_attempts:
                        await self._park(message, f"failed {attempts} times while Salesforce answered: {cause}",
                                         attempts)
                    else:
                        await self._handle(rest, message)
                    return True
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    parking = attempts >= self.settings.intake_max_attempts
                    if not parking:
                        cause = error
                    if self.health.intake_failing_since is None:
                        self.health.intake_failing_since = time.time()
                        self.health.intake_failing_event = _event_label(message)
                    self.health.intake_last_error = error[:300]
                    if not parking and await self._event_is_at_fault(rest, exc):
                        attempts += 1
                        if attempts >= self.settings.intake_max_attempts:
                            continue  # park it now
                    log.error("event parking failed; retrying" if parking else "event handling failed; retrying",
                              channel=message.get("channel"), replay_id=_replay_id_of(message), error=error,
                              attempts=attempts, max_attempts=self.settings.intake_max_attempts, retry_in_s=delay)
                await wait_any(self._stop, within_s=delay)
                delay = min(delay * 2, 30.0)
            return False
        finally:
            self.health.intake_failing_since = None
            self.health.intake_failing_event = None
            self.health.intake_last_error = None

    async def _event_is_at_fault(self, rest: SalesforceRest, exc: Exception) -> bool:
        """Whether this failure counts towards parking the event (see `_handle_until_done`)."""
        if isinstance(exc, sqlite3.OperationalError):
            return False  # the outbox is busy, locked or full: no event is to blame
        if isinstance(exc, AuthError):
            return False  # the login, not the event
        if isinstance(exc, SalesforceError) and exc.transient:
            try:
                await rest.limits()
            except Exception:
                return False  # Salesforce does not answer: an outage, waited out
        return True

    async def _park(self, message: dict[str, Any], reason: str, attempts: int) -> None:
        """Give up on an event without losing what it asked for: reconcile its objects (persisted
        first), then keep the event with its reason and move the replay id past it, in one commit."""
        channel = str(message.get("channel") or "?")
        objects, replay_id = self._event_objects(message)
        if objects:
            await self.request_reconcile(objects)
        parked = await self.outbox.park_event(channel, replay_id, message, reason, attempts)
        self.metrics.events_parked.labels(channel).inc()
        log.error("event parked: intake moves on; `sfsign status` lists it", channel=channel, replay_id=replay_id,
                  parked_id=parked.id, reason=reason, attempts=attempts, reconciling=objects)

    def _event_objects(self, message: dict[str, Any]) -> tuple[list[str], int | None]:
        """The objects whose records a (failed or malformed) event may have been about, and its replay id."""
        channel = str(message.get("channel") or "")
        try:
            event = parse_event(message)
        except MalformedEvent as exc:
            entity = exc.entity or _channel_object(exc.channel or channel)
            replay_id = exc.replay_id
        else:
            entity = event.entity if isinstance(event, ChangeEvent) else _channel_object(channel)
            replay_id = event.replay_id
        objects = [entity] if entity and self.rules.for_object(entity) else []
        return objects, replay_id

    async def _watch_stream(self) -> None:
        """Keep `health` and `ready` in step with the stream (readiness for ops and the demo)."""
        assert self.stream is not None
        channels = set(self.stream.channels)
        while not self._stop.is_set():
            subscribed = self.stream.connected and channels <= set(self.stream.subscribed_replay)
            if subscribed != self.health.subscribed:
                self.metrics.stream_connected.set(1 if subscribed else 0)
                if subscribed:
                    log.info("ready: subscribed", channels=sorted(channels))
                else:
                    self.metrics.stream_disconnects.inc()
                    log.warning("streaming disconnected; reconnecting", channels=sorted(channels))
            self.health.subscribed = subscribed
            if subscribed and not self.ready.is_set():
                self.ready.set()
                await self.outbox.call(_mark_first_subscribed)
            await asyncio.sleep(0.05)

    async def _reconcile_channels_without_position(self) -> None:
        """A change-event channel without a stored replay id subscribes from -1 (new events only). On the
        very first start that is the intent; on a later one it would skip what was published while sfsign
        was down on a channel that never had an event, so the objects of such channels are reconciled
        instead. (Platform-event channels without a position subscribe from -2 instead: a
        `Sign_Request__e` carries no state to query, so every retained one is read, deduped by EventUuid.)"""
        assert self.stream is not None
        if await self.outbox.call(partial(OutboxStore.get_meta, key=FIRST_SUBSCRIBED_KEY)) is None:
            return
        objects = [o for c in self.stream.channels
                   if self.outbox.committed_replay_id(c) is None and (o := _channel_object(c))]
        if objects:
            log.info("no replay position for these objects' channels yet: reconciling them", objects=objects)
            await self.request_reconcile(objects)

    async def _handle(self, rest: SalesforceRest, message: dict[str, Any]) -> None:
        self.health.events_received += 1
        self.health.last_event_at = time.time()
        channel = str(message.get("channel", ""))
        self.metrics.events_received.labels(channel).inc()
        try:
            event = parse_event(message)
            committed = _commit_time(event)
            if committed is not None:
                self.health.last_event_commit[event.channel] = committed
        except MalformedEvent as exc:
            await self._park(message, f"malformed: {exc.reason}", attempts=1)
            return
        org_id = self._org_id()
        if isinstance(event, ChangeEvent):
            decision = decide_change(event, self.rules, org_id)
            for sobject, record_id in decision.reread:
                # A failure raises: the replay id must not move past a gap that was not resolved.
                values = await self._current_values(rest, sobject, [record_id])
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
        if decision and decision.reconcile:
            await self.request_reconcile(decision.reconcile)
        refused = decision.refused if decision else []
        jobs, told = await self._tell_already_signed(rest, jobs)
        refused = [*refused, *told]
        result = await self.outbox.commit_event(event.channel, event.replay_id, jobs, refused)
        for job in result.created:
            self.metrics.jobs_created.labels(job.rule, job.source).inc()
            log.info("job queued", transaction_id=job.transaction_id, record_id=job.record_id, rule=job.rule,
                     source=job.source)
        for dup, why in result.duplicates:
            log.info("duplicate trigger ignored", transaction_id=dup.transaction_id, record_id=dup.record_id,
                     reason=why)
        if decision:
            for why in decision.ignored:
                log.warning("event not acted upon", channel=channel, replay_id=event.replay_id, reason=why)
        if result.created and self.worker is not None:
            self.worker.wake()

    async def _tell_already_signed(
        self, rest: SalesforceRest, jobs: list[NewJob]
    ) -> tuple[list[NewJob], list[AuditEvent]]:
        """The rule for a trigger on a record already signed (stage moved away and back, a second
        "Send for signature"): it signs nothing, and the rep is told so on the record (`Sign_Error__c`,
        while the status stays `Signed`) and in its audit trail, with the way to a new version: Re-issue.

        The note is written before the event commits, so a failed write is retried with the event; a
        replayed event whose job exists is an ordinary duplicate and says nothing twice.
        """
        keep: list[NewJob] = []
        told: list[AuditEvent] = []
        for job in jobs:
            if job.source == REISSUE_SOURCE:
                keep.append(job)
                continue
            signed = await self.outbox.call(partial(_signed_unless_known, job=job))
            if signed is None:
                keep.append(job)
                continue
            note = already_signed_note(signed.signed_at, signed.transaction_id)
            try:
                await rest.update(job.sobject, job.record_id, {"Sign_Error__c": note})
            except SalesforceError as exc:
                if exc.transient:
                    raise  # the event is handled again, note and all
                log.error("could not write the already-signed note on the record", record_id=job.record_id,
                          error_code=exc.error_code)
            detail = f"{job.source} trigger signed nothing: {note}"
            if job.reason:
                detail += f" Reason given: {job.reason}"
            told.append(AuditEvent(transaction_id=signed.transaction_id, sobject=job.sobject, record_id=job.record_id,
                                   event_type="already_signed", actor=job.requested_by or "sfsign", detail=detail))
            log.info("trigger for a record already signed: nothing signed, the record says so",
                     record_id=job.record_id, rule=job.rule, signed_transaction_id=signed.transaction_id,
                     source=job.source)
        return keep, told

    def _org_id(self) -> str:
        if self._token is None or not self._token.org_id:
            raise RuntimeError("not authenticated")
        return self._token.org_id

    async def _current_values(
        self, rest: SalesforceRest, sobject: str, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        """The watched fields of records a gap event names: gap events carry no values."""
        fields = [r.field for r in self.rules.for_object(sobject)]
        rows = await rest.query(current_values_query(sobject, fields, ids))
        return {str(r["Id"]): r for r in rows}

    async def _audit_flusher(self, rest: SalesforceRest) -> None:
        """Copy the outbox's audit rows to `Signature_Event__c`, up to 1,000 per API call (five sObject
        Collections in one `/composite`). Most rows ride along with the worker's write-backs; this sends
        what is left every `audit_flush_s`: the rows that waited that long (a job that failed or waits
        for a retry), not those of jobs in flight, whose write-back will carry them within a second.

        At least once: a call whose outcome is unknown is sent again, so an audit row may rarely appear
        twice in Salesforce; documents, which must be exactly once, have their own guard.
        """
        delay = self.settings.audit_flush_s
        lock = self.worker.audit_lock if self.worker is not None else asyncio.Lock()
        while not self._stop.is_set():
            if self.governor.constrained():  # tight budget: audit rows ride along with the write-backs
                await wait_any(self._stop, within_s=self.settings.audit_flush_s * 12)
            async with lock:  # the worker's write-back also sends audit rows along: never the same row twice
                rows = await self.outbox.call(partial(
                    OutboxStore.pending_audit, limit=AUDIT_ROWS_PER_CALL,
                    older_than=audit_time(time.time() - self.settings.audit_flush_s)))
                if rows:
                    try:
                        results = await rest.create_records("Signature_Event__c", audit_records(rows))
                    except SalesforceError as exc:
                        log.warning("audit events not written yet; will retry", error=str(exc), retry_in_s=delay)
                        results = None
            if not rows:
                await wait_any(self._stop, within_s=self.settings.audit_flush_s)
                continue
            if results is None:
                await wait_any(self._stop, within_s=delay)
                delay = min(delay * 2, 300.0)
                continue
            delay = self.settings.audit_flush_s
            sent = [r["id"] for r, res in zip(rows, results, strict=True) if res.success]
            failed = [(r["id"], res.error) for r, res in zip(rows, results, strict=True) if not res.success]
            await self.outbox.call(partial(OutboxStore.mark_audit, ids=sent, status="sent"))
            for row_id, error in failed:
                log.error("audit event refused by Salesforce", error=str(error))
                await self.outbox.call(partial(OutboxStore.mark_audit, ids=[row_id], status="failed",
                                               error=str(error)))
            if len(rows) < AUDIT_ROWS_PER_CALL:
                await wait_any(self._stop, within_s=self.settings.audit_flush_s)

    async def request_reconcile(self, sobjects: list[str]) -> None:
        """Remember (in SQLite) that these objects need reconciling, then wake the reconciler.

        Persisted first, so a crash between an overflow event's commit and the reconciliation
        cannot lose it: the next start runs what is pending.
        """
        now = datetime.now(UTC).isoformat()
        for sobject in sobjects:
            await self.outbox.call(partial(OutboxStore.set_meta, key=f"{RECONCILE_PREFIX}{sobject}", value=now))
        self._reconcile_wake.set()

    async def _reconciler(self, rest: SalesforceRest) -> None:
        delay = 1.0
        while not self._stop.is_set():
            self._reconcile_wake.clear()
            pending = await self.outbox.call(lambda s: s.meta_with_prefix(RECONCILE_PREFIX))
            # Query only once the subscription is live: a record that moves after the query but before
            # the (re)subscription from -1 would be seen by neither.
            while pending and not self.health.subscribed and not self._stop.is_set():
                await wait_any(self._stop, within_s=0.1)
            failed = False
            for key in pending:
                sobject = key.removeprefix(RECONCILE_PREFIX)
                try:
                    await self.reconcile(rest, [sobject])
                except Exception as exc:
                    failed = True
                    log.error("reconciliation failed; will retry", sobject=sobject,
                              error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                    continue
                await self.outbox.call(partial(OutboxStore.delete_meta, key=key))
            timeout = delay if failed else None
            delay = min(delay * 2, 300.0) if failed else 1.0
            await wait_any(self._stop, self._reconcile_wake, within_s=timeout)

    async def _periodic_reconciler(self, rest: SalesforceRest) -> None:
        """The safety net for triggers the stream never delivered, whatever the cause (an event lost
        between Salesforce and us, a CDC entity deselected for a while, a bug): every interval, one paged
        query per rule for records in a trigger state without a transaction id, queued only if the outbox
        has never had a job for them. Records changed within the last interval (two minutes at most) are
        left to the stream, whose event says who moved the record and when; records last changed before
        sfsign first subscribed are left alone (what sat in a trigger state before the install is the
        operator's call: `sfsign reconcile`).
        """
        interval = self.settings.reconcile_interval_s
        while not self._stop.is_set():
            await wait_any(self._stop, within_s=interval)
            if self._stop.is_set():
                return
            if self.governor.constrained():  # near the daily API allocation: the stream carries on alone
                continue
            first = await self.outbox.call(partial(OutboxStore.get_meta, key=FIRST_SUBSCRIBED_KEY))
            if first is None:  # never subscribed yet: nothing can have been missed
                continue
            until = datetime.now(UTC) - timedelta(seconds=min(interval, PERIODIC_RECONCILE_GRACE_S))
            try:
                created = await self.reconcile(rest, sorted({r.object for r in self.rules.rules}),
                                               since=datetime.fromisoformat(first), until=until, unseen_only=True)
            except Exception as exc:  # Salesforce down: the next pass tries again, never stop the daemon
                log.error("periodic reconciliation failed; next pass in one interval", interval_s=interval,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if created:
                log.warning("periodic reconciliation found records whose trigger never arrived on the stream",
                            jobs_created=created)

    async def _archive_scheduler(self, rest: SalesforceRest) -> None:
        """Renew archive timestamps that come due, once at start and then every interval."""
        from sfsign.archive import queue_due_archive_timestamps

        interval_s = self.settings.ltv_refresh_interval_h * 3600
        while not self._stop.is_set():
            if self.governor.constrained():  # renewals can wait for the API budget (days of margin)
                await wait_any(self._stop, within_s=min(interval_s, 900.0))
                continue
            try:
                queued = await queue_due_archive_timestamps(
                    rest, self.outbox, self.rules, within_days=self.settings.ltv_refresh_within_days
                )
                if queued and self.worker is not None:
                    self.worker.wake()
                wait_s = interval_s
            except Exception as exc:  # Salesforce down: try again soon, never stop the daemon for this
                log.error("archive timestamp scan failed; will retry", error=f"{type(exc).__name__}: {exc}")
                wait_s = min(interval_s, 300.0)
            await wait_any(self._stop, within_s=wait_s)

    async def reconcile(
        self, rest: SalesforceRest, sobjects: list[str], since: datetime | None = None, *,
        until: datetime | None = None, unseen_only: bool = False,
    ) -> int:
        """Queue every record sitting in a trigger state without a transaction id.

        Fed through the same outbox and the same duplicate checks as events, so it can never
        double-sign a record that an event already queued. Pages through the query result and
        commits each page, so memory stays bounded whatever the org's size. `until` leaves out records
        changed since then; `unseen_only` leaves out records that ever had a job for the rule (see
        `OutboxStore.records_with_jobs`).
        """
        created = 0
        org_id = self._org_id()
        for sobject in dict.fromkeys(sobjects):
            for rule in self.rules.for_object(sobject):
                soql = reconcile_query(sobject, rule.field, rule.values, since, until, rule.record_types)
                page = await rest.query_page(soql)
                while True:
                    jobs = []
                    rows = page.records
                    if unseen_only and rows:
                        seen = await self.outbox.call(partial(
                            OutboxStore.records_with_jobs, sobject=sobject, rule=rule.name,
                            record_ids=[str(r["Id"]) for r in rows]))
                        rows = [r for r in rows if str(r["Id"]) not in seen]
                    for row in rows:
                        jobs.extend(decide_current_state(
                            sobject, str(row["Id"]), row, self.rules, org_id, f"reconcile:{row['Id']}"
                        ))
                    result = await self.outbox.commit_event(None, None, jobs)
                    created += len(result.created)
                    if result.created and self.worker is not None:
                        self.worker.wake()
                    if not page.next_records_url:
                        break
                    page = await rest.query_page(next_records_url=page.next_records_url)
        log.info("reconciliation done", objects=sobjects, jobs_created=created)
        return created


async def reconcile_once(
    settings: Settings, rules: Rules, since: datetime | None = None,
    wrap_rest: Callable[[SalesforceRest], SalesforceRest] | None = None,
) -> int:
    """`sfsign reconcile`: one reconciliation pass from the command line, beside or without a daemon.

    It writes to the same outbox (SQLite allows a second writer; the unique transaction id and the
    duplicate checks make a concurrent daemon harmless); a running daemon picks the jobs up.
    `wrap_rest` lets the CLI watch the query pages go by (its progress bar).
    """
    daemon = Daemon(settings, rules)
    await daemon.outbox.open()
    authenticator = Authenticator(auth_config(settings))
    rest = SalesforceRest(authenticator, api_version=settings.api_version)
    try:
        daemon._token = await authenticator.token()
        objects = sorted({r.object for r in rules.rules})
        return await daemon.reconcile(wrap_rest(rest) if wrap_rest else rest, objects, since=since)
    finally:
        await rest.close()
        await authenticator.aclose()
        await daemon.outbox.close()


async def ltv_refresh_once(settings: Settings, rules: Rules, within_days: float) -> int:
    """`sfsign ltv-refresh`: queue the archive timestamps due within `within_days`; a daemon does the work."""
    from sfsign.archive import queue_due_archive_timestamps

    outbox = Outbox(settings.data_dir / "outbox.sqlite")
    await outbox.open()
    authenticator = Authenticator(auth_config(settings))
    rest = SalesforceRest(authenticator, api_version=settings.api_version)
    try:
        return await queue_due_archive_timestamps(rest, outbox, rules, within_days=within_days)
    finally:
        await rest.close()
        await authenticator.aclose()
        await outbox.close()


def current_values_query(sobject: str, fields: Iterable[str], ids: Iterable[str]) -> str:
    """The watched fields of records, for a gap event (which carries no values)."""
    names = sorted({*fields, "Id", "Sign_Transaction_Id__c"})
    return f"SELECT {', '.join(names)} FROM {sobject} WHERE Id IN {soql_id_list(ids)}"


def reconcile_query(
    sobject: str, field: str, values: list[str], since: datetime | None, until: datetime | None = None,
    record_types: list[str] | None = None,
) -> str:
    """Records in a trigger state that sfsign never handled (no transaction id), oldest first; only those of
    the rule's `record_types` when it has them."""
    validate_api_name(sobject)
    validate_field_path(field)
    where = f"{field} IN ({', '.join(soql_quote(v) for v in values)}) AND Sign_Transaction_Id__c = null"
    if record_types is not None:
        where += f" AND {record_type_filter(record_types)}"
    if since is not None:
        where += f" AND LastModifiedDate >= {soql_datetime(since)}"
    if until is not None:
        where += f" AND LastModifiedDate < {soql_datetime(until)}"
    return f"SELECT Id, {field}, Sign_Transaction_Id__c FROM {sobject} WHERE {where} ORDER BY LastModifiedDate"


def certificate_not_after(rules: Rules) -> dict[str, datetime]:
    """`not_after` of the certificate of each signing profile the rules use (blocking: loads keys).

    A profile whose key cannot be loaded is left out (and logged): preflight and the jobs report it.
    """
    out: dict[str, datetime] = {}
    for name in sorted({r.profile for r in rules.rules}):
        try:
            signer = load_signer(signing_request(rules.profiles[name]).key)
        except Exception as exc:
            log.warning("signing certificate not readable for the expiry gauge", profile=name,
                        error=f"{type(exc).__name__}: {exc}")
            continue
        if signer.signing_cert is not None:
            out[name] = signer.signing_cert["tbs_certificate"]["validity"]["not_after"].native
    return out


def _commit_time(event: ChangeEvent | PlatformEvent | Any) -> float | None:
    """When Salesforce committed the event (epoch s): CDC commitTimestamp, platform events' CreatedDate."""
    if isinstance(event, ChangeEvent) and event.commit_timestamp_ms is not None:
        return event.commit_timestamp_ms / 1000
    if isinstance(event, PlatformEvent) and event.created_date is not None:
        return event.created_date.timestamp()
    return None


def _replay_id_of(message: dict[str, Any]) -> Any:
    """The replay id of a raw message, as it came (it may be what made the message malformed)."""
    data = message.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    return event.get("replayId") if isinstance(event, dict) else None


def _event_label(message: dict[str, Any]) -> str:
    """`<channel> replay id <n>` of a raw message, for /readyz."""
    return f"{message.get('channel')} replay id {_replay_id_of(message)}"


def _signed_unless_known(store: OutboxStore, job: NewJob) -> SignedDocument | None:
    """The record's signed document when `job` is a new trigger for it (not a replay of a known one, whose
    job row may be purged while the memory of its document is not)."""
    if store.has_transaction(job.transaction_id):
        return None
    signed = store.signed_job(job.sobject, job.record_id, job.rule)
    return None if signed is None or signed.transaction_id == job.transaction_id else signed


def _probe_write(store: OutboxStore) -> None:
    store.set_meta(OPS_PROBE_KEY, datetime.now(UTC).isoformat())


def _mark_first_subscribed(store: OutboxStore) -> None:
    if store.get_meta(FIRST_SUBSCRIBED_KEY) is None:
        store.set_meta(FIRST_SUBSCRIBED_KEY, datetime.now(UTC).isoformat())


def _channel_object(channel: str) -> str | None:
    if channel.startswith("/data/") and channel.endswith("ChangeEvent"):
        return channel.removeprefix("/data/").removesuffix("ChangeEvent")
    return None
