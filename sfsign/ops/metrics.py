"""Prometheus metrics (prometheus-client). One registry per daemon, so tests and the CLI never share state.

The names follow the seed's monitoring targets: success rate and latency per document, an alert when one
job has failed three times, dead jobs, daily volume, API allocation and certificate expiry. Counters and
histograms are updated where things happen (worker, daemon); gauges that describe *state* (jobs per
state, documents signed today, API usage, replay lag, certificate expiry, readiness) are computed at
scrape time from a `Snapshot`, so they can never drift from the outbox or need resetting at midnight.
The HTTP side is `sfsign/ops/http.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfsign.outbox import JobState, OutboxStats

log = structlog.get_logger("sfsign.ops.metrics")

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.governor_constrained = Gauge(
            "sfsign_api_governor_constrained",
            "1 while API usage is above the budget share and non-urgent work waits", registry=r,
        )
        self.batch_size = Histogram(
            "sfsign_batch_size", "Records or files per batched Salesforce call", ["stage"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r,
        )
        self.events_received = Counter(
            "sfsign_events_received", "Streaming events received", ["channel"], registry=r
        )
        self.jobs_created = Counter("sfsign_jobs_created", "Jobs queued", ["rule", "source"], registry=r)
        self.step_seconds = Histogram(
            "sfsign_step_duration_seconds", "Duration of one job step", ["step"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "sfsign_end_to_end_latency_seconds", "From the Salesforce change to Signed on the record",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter("sfsign_retries", "Job steps that failed and were rescheduled", ["error_code"],
                               registry=r)
        self.failing_jobs = Counter(
            "sfsign_job_failure_alerts",
            "Failed attempts of jobs that had already failed at least twice (alert on any increase)",
            ["error_code"], registry=r,
        )
        self.dead_jobs = Counter(
            "sfsign_dead_jobs", "Jobs that failed for their whole retry window (a person must act)", registry=r
        )
        self.errored_jobs = Counter("sfsign_error_jobs", "Jobs that failed permanently", ["error_code"],
                                    registry=r)
        self.stream_connected = Gauge("sfsign_stream_connected", "1 while subscribed to every channel",
                                      registry=r)
        self.stream_disconnects = Counter("sfsign_stream_disconnects", "Times the subscription was lost",
                                          registry=r)
        self.documents_signed = Counter("sfsign_documents_signed", "Documents signed and written back",
                                        ["rule"], registry=r)
        self.events_parked = Counter(
            "sfsign_events_parked", "Events intake gave up on and parked (`sfsign status`); their objects are "
            "reconciled", ["channel"], registry=r,
        )
        self.config_reloads = Counter("sfsign_config_reloads", "Rules reloads applied (SIGHUP)", registry=r)
        self.config_reload_failures = Counter(
            "sfsign_config_reload_failures", "Rules reloads refused because the new rules are invalid (SIGHUP)",
            registry=r,
        )
        self.mails_sent = Counter("sfsign_mails_sent", "Envelope mails the relay accepted", ["kind"], registry=r)
        self.mails_failed = Counter(
            "sfsign_mails_failed", "Envelope mails not sent: outcome retry (relay down or 4xx, tried again), "
            "misconfigured (the relay refuses sfsign's settings; tried again), rejected (5xx for the address) or "
            "unsendable (the mail cannot be written)", ["kind", "outcome"], registry=r,
        )
        self.state = SnapshotCollector()
        r.register(self.state)

    def mail_sent(self, kind: str) -> None:
        self.mails_sent.labels(kind).inc()

    def mail_failed(self, kind: str, outcome: str) -> None:
        self.mails_failed.labels(kind, outcome).inc()

    def render(self, snapshot: Snapshot) -> bytes:
        """The exposition text with the scrape-time gauges taken from `snapshot`.

        Synchronous on purpose: setting the snapshot and rendering happen without an `await` in
        between, so two concurrent scrapes on the event loop cannot see each other's snapshot.
        """
        self.state.snapshot = snapshot
        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------ scrape-time state


@dataclass(frozen=True)
class Snapshot:
    """What the scrape-time gauges show; None/empty where the source is not known (yet)."""

    outbox: OutboxStats | None = None
    api_usage: tuple[int, int] | None = None  # (used, max) from Sforce-Limit-Info
    replay_lag_s: Mapping[str, float] = field(default_factory=dict)
    certificate_expiry_days: Mapping[str, float] = field(default_factory=dict)
    ready: bool = False
    intake_stalled_s: float = 0.0  # how long the event intake is on has been failing (0: none is)
    oldest_mail_age_s: float = 0.0  # how long the oldest queued mail has waited for the relay (0: none waits)


class SnapshotCollector(Collector):
    """A custom collector: the registry asks it for families at every `generate_latest`."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def describe(self) -> Iterable[Metric]:
        return list(self._families(Snapshot()))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.snapshot))

    @staticmethod
    def _families(snap: Snapshot) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("sfsign_jobs", "Jobs per state in the outbox", labels=["state"])
        today = GaugeMetricFamily(
            "sfsign_documents_signed_today", "Documents that showed Signed on their record since 00:00 UTC"
        )
        if snap.outbox is not None:
            for state in JobState:  # every state, so a rule on `dead > 0` has a series even at zero
                jobs.add_metric([state.value], snap.outbox.jobs_by_state.get(state.value, 0))
            today.add_metric([], snap.outbox.signed_today)
        parked = GaugeMetricFamily(
            "sfsign_parked_events", "Events in the outbox that intake gave up on (`sfsign status` lists them)"
        )
        if snap.outbox is not None:
            parked.add_metric([], snap.outbox.parked_events)
        mails = GaugeMetricFamily("sfsign_mails_pending",
                                  "Envelope mails queued for the relay (due, or waiting to be tried again)")
        oldest = GaugeMetricFamily(
            "sfsign_mail_oldest_pending_seconds", "Age of the oldest mail still queued (0: none); grows while the "
            "relay is down or refuses sfsign's settings")
        if snap.outbox is not None:
            mails.add_metric([], snap.outbox.mails_pending)
            oldest.add_metric([], snap.oldest_mail_age_s)
        yield jobs
        yield today
        yield parked
        yield mails
        yield oldest
        yield GaugeMetricFamily(
            "sfsign_intake_stalled_seconds",
            "How long the event intake is working on has been failing: the replay id does not move meanwhile",
            value=snap.intake_stalled_s,
        )
        used = GaugeMetricFamily("sfsign_api_requests_used", "Salesforce API requests used today (Sforce-Limit-Info)")
        limit = GaugeMetricFamily("sfsign_api_requests_limit", "Salesforce daily API request allocation")
        if snap.api_usage is not None:
            used.add_metric([], snap.api_usage[0])
            limit.add_metric([], snap.api_usage[1])
        yield used
        yield limit
        lag = GaugeMetricFamily(
            "sfsign_replay_lag_seconds", "Now minus the commit time of the last event received on the channel",
            labels=["channel"],
        )
        for channel, seconds in sorted(snap.replay_lag_s.items()):
            lag.add_metric([channel], seconds)
        yield lag
        expiry = GaugeMetricFamily(
            "sfsign_signing_certificate_expiry_days", "Days until the signing certificate of a profile expires",
            labels=["profile"],
        )
        for profile, days in sorted(snap.certificate_expiry_days.items()):
            expiry.add_metric([profile], days)
        yield expiry
        yield GaugeMetricFamily("sfsign_ready", "1 while /readyz answers ready", value=1 if snap.ready else 0)


def utc_day_start(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


class OutboxLike(Protocol):
    async def stats(self, signed_since: float) -> OutboxStats: ...


class CertificateExpiry:
    """`not_after` of each signing profile's certificate, read when the rules are (re)loaded and
    periodically, never per scrape: loading a key (or opening a token session) is not a scrape's job."""

    def __init__(self) -> None:
        self._not_after: dict[str, datetime] = {}

    def set(self, not_after: Mapping[str, datetime]) -> None:
        self._not_after = dict(not_after)

    def days(self, now: float) -> dict[str, float]:
        return {p: round((t.timestamp() - now) / 86400, 3) for p, t in self._not_after.items()}


@dataclass
class ScrapeSources:
    """Where the scrape-time gauges come from; the daemon wires these to its parts."""

    outbox: OutboxLike
    api_usage: Callable[[], tuple[int, int] | None]
    last_event_commit: Callable[[], Mapping[str, float]]  # channel -> epoch seconds of the last event's commit
    certificates: CertificateExpiry
    ready: Callable[[], Awaitable[bool]]
    clock: Callable[[], float] = time.time
    outbox_timeout_s: float = 5.0
    intake_failing_since: Callable[[], float | None] = lambda: None  # epoch s the current event first failed


async def take_snapshot(sources: ScrapeSources) -> Snapshot:
    """Read every scrape-time value; an outbox that does not answer leaves its gauges out, it never hangs
    the scrape."""
    now = sources.clock()
    stats: OutboxStats | None
    try:
        stats = await asyncio.wait_for(
            sources.outbox.stats(signed_since=utc_day_start(now)),
            sources.outbox_timeout_s,
        )
    except Exception as exc:
        log.warning("metrics: outbox not readable", error=f"{type(exc).__name__}: {exc}")
        stats = None
    lag = {c: max(0.0, round(now - t, 3)) for c, t in sources.last_event_commit().items()}
    failing_since = sources.intake_failing_since()
    return Snapshot(
        outbox=stats,
        api_usage=sources.api_usage(),
        replay_lag_s=lag,
        certificate_expiry_days=sources.certificates.days(now),
        ready=await sources.ready(),
        intake_stalled_s=max(0.0, round(now - failing_since, 3)) if failing_since is not None else 0.0,
        oldest_mail_age_s=max(0.0, round(now - stats.oldest_mail_at, 3)) if stats and stats.oldest_mail_at else 0.0,
    )

