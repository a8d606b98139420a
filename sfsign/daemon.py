"""The supervisor: builds the daemon's parts, starts them in order and stops them in a declared order.

Start: ops endpoint → outbox → authentication → REST → the rules checked against the org → CPU pool →
worker → the parts in `Daemon._parts` (intake first, which subscribes to the stream). Stop (SIGTERM,
SIGINT or the `stop` event): each part declares when it stops (`Part.stop`): intake and the loops that
make new work first (no new jobs), then the worker, whose in-flight steps may finish up to the grace
deadline (the rest resume at their last persisted step on the next start); then the pool, the clients
and the database close in the reverse order of their opening, and the ops endpoint last. SIGHUP reloads
the rules file (`reload`). Nothing is acknowledged to Salesforce except through the replay id, which
only moves after the outbox commit.

Knobs (Settings): `ops_host`/`ops_port` (the ops endpoint; -1 turns it off), `cpu_workers`,
`shutdown_grace_s` (how long in-flight steps may finish), `intake_stuck_after_s` (/readyz), and the
knobs of each part, listed in its module: `sfsign.intake`, `sfsign.reconcile`, `sfsign.audit`,
`sfsign.archive`, `sfsign.certificates`, `sfsign.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from sfsign.aio import wait_any
from sfsign.archive import ArchiveScheduler
from sfsign.audit import AuditRelay
from sfsign.certificates import CertificateWatch
from sfsign.config import ConfigError, Rules, Settings, load_rules
from sfsign.connections import SalesforceSession
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.render import POOL_PRELOAD, POOL_START_METHOD
from sfsign.envelope_due import EnvelopeDue
from sfsign.envelope_mirror import EnvelopeMirror
from sfsign.governor import ApiGovernor
from sfsign.intake import Health, Intake
from sfsign.ops.api_usage import record_api_usage
from sfsign.ops.http import OpsServer, Readiness
from sfsign.ops.metrics import CertificateExpiry, Metrics, ScrapeSources, take_snapshot
from sfsign.ops.retention import purge_loop
from sfsign.outbox import Outbox
from sfsign.parts import Part, Stop, stop_parts
from sfsign.private_files import private_dir
from sfsign.profiles import preflight_profiles
from sfsign.reconcile import Reconciler
from sfsign.salesforce.auth import AccessToken, Authenticator
from sfsign.salesforce.errors import AuthError, SalesforceError
from sfsign.salesforce.event_stream import EventStream
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.signing.tokens import LinkKeyError, LinkKeys
from sfsign.worker import Worker, WorkerConfig
from sfsign.worker_config import message_domain

if TYPE_CHECKING:
    from sfsign.check import Check
    from sfsign.config.smtp import SmtpRelay
    from sfsign.signing.service import SigningService

log = structlog.get_logger("sfsign.daemon")
T = TypeVar("T")

OUTBOX_PROBE_TIMEOUT_S = 2.0


class Daemon:
    """One sfsign process: its health, its parts, and the order they start and stop in.

    Tests and `sfsign demo` watch it through `health`, `ready`, `outbox`, `metrics` and `readiness()`.
    """

    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.health = Health()
        self.outbox = Outbox(settings.data_dir / "outbox.sqlite")
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.worker: Worker | None = None
        self.stream: EventStream | None = None
        self.stopped_by: signal.Signals | None = None
        self.authenticator: Authenticator | None = None
        self.metrics = Metrics()
        self.governor = ApiGovernor(
            lambda: self._rest.api_usage if self._rest is not None else None, settings.api_budget_share
        )
        self.certificates = CertificateExpiry()
        self._pool: ProcessPoolExecutor | None = None
        self.certificate_watch = CertificateWatch(self.certificates, lambda: self.rules, self._stop,
                                                  pool=lambda: self._pool)
        self.ops_server: OpsServer | None = None
        self._rest: SalesforceRest | None = None
        self._session: SalesforceSession | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        #: Where the envelope parts take "now" from (a test sets a fake clock before `run`).
        self.clock: Clock = SystemClock()
        self.envelope_mirror: EnvelopeMirror | None = None
        self.envelope_due: EnvelopeDue | None = None
        self.signing: SigningService | None = None
        self._keys: LinkKeys | None = None  # the signing pages and the mail loop, when customers sign

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
        """Open what the parts need (closed in reverse on the way out), run the parts, stop them in order."""
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        running: list[tuple[Part, asyncio.Task[object]]] = []
        try:
            async with contextlib.AsyncExitStack() as opened:
                await self.outbox.open()
                opened.push_async_callback(self.outbox.close)
                session = self._session = SalesforceSession(self.settings)
                opened.push_async_callback(session.aclose)  # streams, then REST, then the login client
                self.authenticator = session.authenticator
                self.governor = session.governor
                try:
                    await self._start(opened, running)
                finally:
                    self._stop.set()
                    log.info("stopping: intake first")
                    await stop_parts(running)
        finally:
            self._rest = None
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("stopped")

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed: list[signal.Signals] = []
        handlers: list[tuple[signal.Signals, Callable[..., None], tuple[Any, ...]]] = [
            (signal.SIGTERM, self._on_signal, (signal.SIGTERM,)), (signal.SIGINT, self._on_signal, (signal.SIGINT,)),
            (signal.SIGHUP, self._on_reload_signal, ()),
        ]
        for sig, handler, args in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler, *args)
                installed.append(sig)
        return installed

    async def _start(self, opened: contextlib.AsyncExitStack, running: list[tuple[Part, asyncio.Task[object]]]) -> None:
        """Log in, check the rules against the org, build the worker and the parts, and run them until the
        daemon stops or a part fails (its exception ends the daemon)."""
        assert self.authenticator is not None
        token = await self._first_login(self.authenticator)
        if token is None:
            return  # stopped while Salesforce was unreachable
        self.health.authenticated = True
        self.health.org_id = token.org_id
        self.health.instance_url = token.instance_url
        log.info("authenticated", org_id=token.org_id, instance_url=token.instance_url)
        assert self._session is not None
        rest = self._rest = self._session.rest
        # Before subscribing: a rule on a field or value this org lacks would never fire. The same
        # findings as `sfsign check`, refused with its words (exit code 3).
        from sfsign.check import refuse_on_failures  # it imports the renderer

        findings = await self._startup_rule_check(rest)
        if findings is None:
            return  # stopped while Salesforce was unavailable
        refuse_on_failures(findings)
        pool, warm_up = self._start_pool()
        self._pool = pool
        opened.callback(partial(pool.shutdown, wait=True, cancel_futures=True))
        self.worker = self._build_worker(rest, pool, token)
        parts = [*self._parts(rest, token), *await self._signing_parts()]
        # A signature or an envelope's end: a job may be due (the worker) and the record has news (the mirror).
        wakes = [self.worker.wake, *([self.envelope_mirror.wake] if self.envelope_mirror else [])]

        def wake_all() -> None:
            for wake in wakes:
                wake()

        self.outbox.wake = wake_all
        for part in parts:
            running.append((part, asyncio.create_task(part.run(), name=part.name)))
        # Renders queue behind the warm-up in the pool, so the first document does not pay for
        # interpreter and template start-up twice; intake and fetches proceed meanwhile.
        for problem in sorted({p for found in await asyncio.gather(*warm_up) for p in found}):
            log.error("a template does not render sample data; its records will get Error", problem=problem)
        stop_wait = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([stop_wait, *(t for _, t in running)], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            await asyncio.gather(stop_wait, return_exceptions=True)
        for task in done:
            if task is not stop_wait and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def _pool_size(self) -> int:
        return self.settings.cpu_workers or os.cpu_count() or 2

    def _start_pool(self) -> tuple[ProcessPoolExecutor, list[asyncio.Future[list[str]]]]:
        """The render/sign processes, each warming up (interpreter, templates) as soon as it starts."""
        workers = self._pool_size()
        # Not fork: the parent has threads (outbox, REST pool), and fork would copy their locks. A fork
        # server that has imported the signing stack (documents/pool_preload.py) forks each process, so
        # they share those pages instead of each importing its own copy, as spawn did.
        context = multiprocessing.get_context(POOL_START_METHOD)
        context.set_forkserver_preload([POOL_PRELOAD])
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        templates = tuple(sorted({str(t) for t in self.rules.templates.values()}))
        fields = self.rules.template_fields()
        loop = asyncio.get_running_loop()
        return pool, [loop.run_in_executor(pool, doc_jobs.warm_up, templates, fields) for _ in range(workers)]

    def _build_worker(self, rest: SalesforceRest, pool: ProcessPoolExecutor, token: AccessToken) -> Worker:
        settings, authenticator = self.settings, self.authenticator
        assert authenticator is not None
        config = WorkerConfig(
            artifacts_dir=settings.data_dir / "artifacts", concurrency=settings.workers,
            cpu_slots=2 * self._pool_size(), batch_linger_s=settings.batch_linger_s,
            batch_linger_burst_s=settings.batch_linger_burst_s,
            batch_linger_burst_first_s=settings.batch_linger_burst_first_s,
            api_latency_share=settings.api_latency_share, pending_after_s=settings.pending_after_s,
            retry_for_s=settings.retry_for_h * 3600, backoff_base_s=settings.retry_base_s,
            backoff_cap_s=settings.retry_cap_s, multi_currency=settings.multi_currency,
            ltv_delay_s=settings.ltv_delay_s, artifact_grace_s=settings.artifact_grace_s,
            link_keys=self._link_keys(), message_domain=message_domain(settings.mail_from),
        )
        return Worker(
            outbox=self.outbox, rest=rest, rules=self.rules, cpu_pool=pool, config=config,
            instance_url=lambda: (authenticator.current or token).instance_url, metrics=self.metrics,
            governor=self.governor, clock=self.clock,
        )

    def _parts(self, rest: SalesforceRest, token: AccessToken) -> list[Part]:
        """The parts in their start order, each with its stop declared (see `Stop` and `Part`)."""
        settings, worker, stop = self.settings, self.worker, self._stop
        assert worker is not None and self.authenticator is not None
        rules = self._current_rules
        assert self._session is not None
        self.stream = self._session.open_stream(
            self.rules.channels(), self.outbox.committed_replay_id,
            # A "Send for signature" click carries no state a reconciliation could find: without a
            # position, read every retained event (72 h); their EventUuid makes a replay a no-op.
            replay_all=[c for c in self.rules.channels() if c.startswith("/event/")],
        )
        reconciler = Reconciler(
            self.outbox, rest, rules=rules, org_id=token.org_id, wake=worker.wake,
            subscribed=lambda: self.health.subscribed, interval_s=settings.reconcile_interval_s,
            governor=self.governor, stop=stop, unconfirmed=lambda: intake.unconfirmed_objects(),
        )
        intake = Intake(
            self.outbox, rest, self.stream, rules=rules, org_id=token.org_id, reconciler=reconciler,
            wake=worker.wake, health=self.health, metrics=self.metrics, ready=self.ready,
            max_attempts=settings.intake_max_attempts, stop=stop, clock=self.clock,
        )
        audit = AuditRelay(self.outbox, rest, flush_s=settings.audit_flush_s, governor=self.governor, stop=stop)
        worker.audit_lock = audit.lock  # the relay owns the lock its rows are sent under; the write-back takes it
        # Customer signing: envelopes on their records, reminders and expiry (idle while there are none).
        mirror = self.envelope_mirror = EnvelopeMirror(
            self.outbox, rest, rules=rules, notification_type=settings.notification_type, governor=self.governor,
            audit_lock=audit.lock, stop=stop, clock=self.clock)
        due = self.envelope_due = EnvelopeDue(self.outbox, stop=stop, clock=self.clock, on_change=mirror.wake)
        parts = [
            Part("intake", intake.run, close=self._close_stream),
            Part("reconciler", reconciler.run),
            Part("audit", audit.run),
            Part("envelope-mirror", mirror.run),
            Part("envelope-due", due.run),
        ]
        if settings.ltv_refresh_interval_h > 0:
            archive = ArchiveScheduler(
                rest, self.outbox, rules=rules, interval_h=settings.ltv_refresh_interval_h,
                within_days=settings.ltv_refresh_within_days, wake=worker.wake, governor=self.governor, stop=stop,
            )
            parts.append(Part("ltv-refresh", archive.run))
        return [
            *parts,
            Part("worker", partial(worker.run, stop), stop=Stop.IN_FLIGHT, drain=self._drain_worker),
            Part("certificates", self.certificate_watch.run),
            Part("retention", partial(purge_loop, self.outbox, settings, stop)),
            Part("api-usage", partial(record_api_usage, self.outbox, lambda: rest.api_usage, stop)),
        ]

    def _link_keys(self) -> LinkKeys:
        """The signing links' key, read once for the worker (which makes the links) and the signing pages and
        mail loop (which check and send them); an unusable configured key is a configuration error."""
        if self._keys is None:
            try:
                self._keys = LinkKeys.load(self.settings.data_dir)
            except LinkKeyError as exc:
                raise ConfigError(str(exc)) from None
        return self._keys

    async def _signing_parts(self) -> list[Part]:
        """The signing pages and the mail loop, when customers sign (`sfsign.signing.service.needed`). Both
        stop with the new work: the pages close before the worker drains."""
        from sfsign.signing.service import SigningService, needed

        if not await needed(self.rules, self.outbox):
            return []
        relay = self.settings.smtp_relay()
        if relay is None:  # only live envelopes of a rule that lost its signers: the rules' check did not see it
            from sfsign.check import refuse_on_failures
            from sfsign.check.local import relay_missing

            refuse_on_failures([relay_missing("the outbox holds live envelopes or queued mails")])
            return []
        await self._check_relay(relay)
        self.signing = SigningService(self.outbox, self.settings, relay, self._current_rules, self._link_keys(),
                                      counters=self.metrics, stop=self._stop, clock=self.clock)
        return [Part("signing-pages", self.signing.pages, close=self.signing.close_pages),
                Part("mail", self.signing.mail, drain=self.signing.drain_mail)]

    async def _check_relay(self, relay: SmtpRelay) -> None:
        """A session with the relay, no mail sent: one that refuses sfsign's settings (login, certificate,
        STARTTLS, sender) refuses start with `check`'s words; one that cannot be reached now is waited out by
        the mail queue, so the daemon says so and starts."""
        from sfsign.check import refuse_on_failures
        from sfsign.check.relay import relay_startup_finding

        finding, fatal = await relay_startup_finding(relay)
        if fatal:
            refuse_on_failures([finding])
        elif finding.ok is False:
            log.error("the mail relay cannot be reached; mails stay queued until it answers", relay=relay.url,
                      error=finding.detail, fix=finding.fix)

    def _current_rules(self) -> Rules:
        """The rules in force: parts read them through this, so a reload applies to their next step."""
        return self.rules

    async def _close_stream(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.aclose()

    async def _drain_worker(self) -> None:
        if self.worker is not None:
            parked = await self.worker.drain(self.settings.shutdown_grace_s)
            if parked:
                log.warning("in-flight jobs parked; they resume on next start", jobs=parked)

    async def _first_login(self, authenticator: Authenticator) -> AccessToken | None:
        """Log in, waiting out transient failures (network, 5xx); a refused login ends the daemon."""
        return await self._retrying(authenticator.token, AuthError, "cannot reach Salesforce to log in; retrying")

    async def _startup_rule_check(self, rest: SalesforceRest) -> list[Check] | None:
        """The rules and the notification type against the org, waiting out an outage (a 503 at start says
        nothing about the rules, and refusing to start on it would turn a Salesforce blip into a crash loop);
        only real findings refuse."""
        from sfsign.check import check_rules  # it imports the renderer
        from sfsign.check.org import check_notification_type

        async def findings() -> list[Check]:
            return [*await check_rules(rest, self.rules),
                    await check_notification_type(rest, self.settings.notification_type)]

        return await self._retrying(findings, SalesforceError, "cannot check the rules against Salesforce; retrying")

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], errors: type[AuthError | SalesforceError], message: str,
    ) -> T | None:
        """`attempt()` until it answers, backing off from 1 s to 60 s while it fails transiently; a permanent
        failure raises; None if the daemon is told to stop meanwhile."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                return await attempt()
            except errors as exc:
                if not exc.transient:
                    raise
                log.error(message, error=str(exc), retry_in_s=delay)
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
            await asyncio.wait_for(self.outbox.probe_write(), OUTBOX_PROBE_TIMEOUT_S)
        except TimeoutError:
            writable = False
            reasons.append(f"the outbox did not take a write within {OUTBOX_PROBE_TIMEOUT_S:g} s")
        except Exception as exc:
            writable = False
            reasons.append(f"the outbox is not writable: {type(exc).__name__}: {exc}")
        stuck = self.health.intake_stuck(self.settings.intake_stuck_after_s)
        intake_moving = stuck is None
        if stuck is not None:
            reasons.append(stuck)
        checks = {"authenticated": self.health.authenticated, "subscribed": self.health.subscribed,
                  "outbox_writable": writable, "intake_moving": intake_moving}
        if self.signing is not None and self.settings.signing_port >= 0:
            checks["signing_pages"] = self.signing.listening
            if not self.signing.listening:
                reasons.append("the signing pages are not listening")
        return Readiness(reasons=tuple(reasons), checks=checks)

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
            await self.certificate_watch.refresh(rules)
            return True
