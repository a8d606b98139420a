"""The ops endpoint and the scrape-time metrics: a real aiohttp server on a free port, a real SQLite outbox
for the statistics; the daemon and (where said) the outbox are fakes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from job_paths import done, ltv_pending
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sfsign import daemon as daemon_module
from sfsign.config import ConfigError, Settings, load_rules
from sfsign.daemon import Daemon
from sfsign.ops.http import OpsServer, Readiness
from sfsign.ops.logging import MASK, redact
from sfsign.ops.metrics import (
    CertificateExpiry,
    Metrics,
    ScrapeSources,
    Snapshot,
    take_snapshot,
    utc_day_start,
)
from sfsign.outbox import OPS_PROBE_KEY, JobState, NewJob, OutboxStats, OutboxStore

NOW = datetime(2026, 3, 14, 15, 0, tzinfo=UTC).timestamp()


class FakeDaemon:
    """Readiness and metrics as the daemon would give them to the server."""

    def __init__(self) -> None:
        self.reasons: tuple[str, ...] = ()
        self.scrapes = 0

    async def readiness(self) -> Readiness:
        return Readiness(reasons=self.reasons, checks={"subscribed": not self.reasons})

    async def metrics(self) -> bytes:
        self.scrapes += 1
        return b"# HELP x y\n# TYPE x counter\nx_total 1.0\n"


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeDaemon, OpsServer]]:
    fake = FakeDaemon()
    server = OpsServer("127.0.0.1", 0, readiness=fake.readiness, metrics=fake.metrics)
    await server.start()
    try:
        yield fake, server
    finally:
        await server.stop()


async def test_healthz_readyz_and_metrics_with_fake_daemon(served: tuple[FakeDaemon, OpsServer]) -> None:
    fake, server = served
    assert server.port and server.port > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        fake.reasons = ("not subscribed to every streaming channel",)
        unready = await client.get("/readyz")
        metrics = await client.get("/metrics")
        missing = await client.get("/nothing")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "subscribed": True})
    assert unready.status_code == 503
    assert unready.json() == {"ready": False, "subscribed": False,
                              "reasons": ["not subscribed to every streaming channel"]}
    assert metrics.status_code == 200 and metrics.headers["content-type"] == CONTENT_TYPE_LATEST
    assert metrics.text.endswith("x_total 1.0\n") and fake.scrapes == 1
    assert missing.status_code == 404


async def test_a_port_in_use_is_a_configuration_error_that_names_the_setting_with_fake_daemon() -> None:
    fake = FakeDaemon()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = OpsServer("127.0.0.1", taken.getsockname()[1], readiness=fake.readiness, metrics=fake.metrics)
        with pytest.raises(ConfigError, match="SFSIGN_OPS_PORT"):
            await server.start()
    assert server.port is None


def test_ops_settings_default_to_loopback_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (default.ops_host, default.ops_port) == ("127.0.0.1", 8787)
    monkeypatch.setenv("SFSIGN_OPS_HOST", "0.0.0.0")
    monkeypatch.setenv("SFSIGN_OPS_PORT", "-1")
    configured = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (configured.ops_host, configured.ops_port) == ("0.0.0.0", -1)
    monkeypatch.setenv("SFSIGN_OPS_PORT", "-2")
    with pytest.raises(ValueError, match="ops_port"):
        Settings(_env_file=None)  # type: ignore[call-arg]


async def test_readiness_names_every_failed_check_of_a_daemon_that_has_not_connected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = load_rules(Path(__file__).parents[3] / "config" / "rules.yaml")
    daemon = Daemon(Settings(_env_file=None, data_dir=tmp_path), rules)  # type: ignore[call-arg]
    closed = await daemon.readiness()
    await daemon.outbox.open()
    try:
        opened = await daemon.readiness()
        monkeypatch.setattr(daemon_module, "OUTBOX_PROBE_TIMEOUT_S", 0.05)
        release = threading.Event()
        busy = asyncio.ensure_future(daemon.outbox.call(lambda _s: release.wait(30)))  # holds the outbox thread
        try:
            blocked = await daemon.readiness()
        finally:
            release.set()
            await busy
        daemon.health.authenticated = daemon.health.subscribed = True
        ready = await daemon.readiness()
        daemon.request_stop()
        stopping = await daemon.readiness()
        probe = await daemon.outbox.get_meta(OPS_PROBE_KEY)
    finally:
        await daemon.outbox.close()

    assert closed.reasons == ("not authenticated with Salesforce", "not subscribed to every streaming channel",
                              "the outbox is not writable: RuntimeError: outbox is not open")
    assert closed.checks == {"authenticated": False, "subscribed": False, "outbox_writable": False,
                             "intake_moving": True}
    assert opened.checks["outbox_writable"] is True and len(opened.reasons) == 2
    assert blocked.reasons[-1] == "the outbox did not take a write within 0.05 s"
    assert ready.ready and ready.as_json() == {"ready": True, "authenticated": True, "subscribed": True,
                                               "outbox_writable": True, "intake_moving": True}
    assert stopping.reasons == ("stopping",)
    assert probe is not None  # the probe really wrote


# ------------------------------------------------------------------------------------------ statistics


def test_outbox_stats_count_states_and_documents_signed_since_midnight_utc(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    jobs = [NewJob(f"tx-{n}", "r", "Opportunity", f"006{n:015d}", "cdc") for n in range(5)]
    created = {j.transaction_id: j for j in store.commit_event("/c", 1, jobs).created}
    today, yesterday = utc_day_start(NOW) + 60, utc_day_start(NOW) - 60
    done(store, created["tx-0"], at=today)
    ltv_pending(store, created["tx-1"], at=today)  # Signed, upgrade pending
    done(store, created["tx-2"], at=yesterday)
    store.mark_error(created["tx-3"], "no line items", "NOT_RENDERABLE")
    assert store.add_archive_job(transaction_id="renewal", rule="r", sobject="Opportunity", record_id="006x",
                                 content_document_id="069x", content_version_id="068x", source="ltv-refresh")

    stats = store.stats(signed_since=utc_day_start(time.time()))  # the renewal is stamped "now"
    stats_at_noon = store.stats(signed_since=utc_day_start(NOW))

    assert stats.jobs_by_state == {"done": 2, "ltv_pending": 2, "error": 1, "queued": 1}
    assert stats_at_noon.signed_today == 2  # not yesterday's, not the archive renewal
    assert utc_day_start(NOW) == datetime(2026, 3, 14, tzinfo=UTC).timestamp()


class FakeOutbox:
    """Answers `stats` with canned statistics, or fails / hangs like a broken database."""

    def __init__(self, stats: OutboxStats | None = None, *, hang: bool = False) -> None:
        self.canned = stats
        self.hang = hang

    async def stats(self, signed_since: float) -> OutboxStats:
        if self.hang:
            await asyncio.sleep(3600)
        if self.canned is None:
            raise RuntimeError("outbox is not open")
        return self.canned


def _families(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_scrape_time_gauges_come_from_the_outbox_salesforce_stream_and_certificates_with_fake_outbox() -> None:
    certificates = CertificateExpiry()
    certificates.set({"company-seal": datetime.fromtimestamp(NOW, UTC) + timedelta(days=29, hours=12)})
    readiness_asked: list[bool] = []

    async def ready() -> bool:
        readiness_asked.append(True)
        return True

    sources = ScrapeSources(
        outbox=FakeOutbox(OutboxStats(jobs_by_state={"done": 7, "dead": 1}, signed_today=5)),
        api_usage=lambda: (1234, 15000),
        last_event_commit=lambda: {"/data/OpportunityChangeEvent": NOW - 2.5, "/event/Sign_Request__e": NOW + 1},
        certificates=certificates,
        ready=ready,
        clock=lambda: NOW,
    )
    metrics = Metrics()
    metrics.events_received.labels("/data/OpportunityChangeEvent").inc(3)
    text = metrics.render(await take_snapshot(sources))
    got = _families(text)

    assert got["sfsign_jobs"][(("state", "done"),)] == 7
    assert got["sfsign_jobs"][(("state", "dead"),)] == 1
    assert {dict(k)["state"] for k in got["sfsign_jobs"]} == {s.value for s in JobState}  # zeros included
    assert got["sfsign_jobs"][(("state", "queued"),)] == 0
    assert got["sfsign_documents_signed_today"][()] == 5
    assert got["sfsign_api_requests_used"][()] == 1234 and got["sfsign_api_requests_limit"][()] == 15000
    assert got["sfsign_replay_lag_seconds"] == {(("channel", "/data/OpportunityChangeEvent"),): 2.5,
                                                (("channel", "/event/Sign_Request__e"),): 0.0}  # clock skew
    assert got["sfsign_signing_certificate_expiry_days"] == {(("profile", "company-seal"),): 29.5}
    assert got["sfsign_ready"][()] == 1 and readiness_asked
    assert got["sfsign_events_received_total"][(("channel", "/data/OpportunityChangeEvent"),)] == 3


@pytest.mark.parametrize("outbox", [FakeOutbox(None), FakeOutbox(hang=True)], ids=["fails", "hangs"])
async def test_a_broken_outbox_leaves_its_gauges_out_and_the_scrape_still_answers_with_fake_outbox(
    outbox: FakeOutbox,
) -> None:
    async def not_ready() -> bool:
        return False

    sources = ScrapeSources(outbox=outbox, api_usage=lambda: None, last_event_commit=dict,
                            certificates=CertificateExpiry(), ready=not_ready, outbox_timeout_s=0.05)
    snapshot = await take_snapshot(sources)
    got = _families(Metrics().render(snapshot))

    assert snapshot.outbox is None
    assert "sfsign_jobs" not in got and "sfsign_documents_signed_today" not in got
    assert "sfsign_api_requests_used" not in got and got["sfsign_ready"][()] == 0


def test_two_daemons_never_share_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.dead_jobs.inc()
    assert _families(first.render(Snapshot()))["sfsign_dead_jobs_total"][()] == 1
    assert _families(second.render(Snapshot()))["sfsign_dead_jobs_total"][()] == 0


# ------------------------------------------------------------------------------------------ redaction


@pytest.mark.parametrize("key", ["pin", "user_pin", "SFSIGN_TOKEN_PIN", "passphrase", "tsa_password",
                                 "private_key_passphrase", "access_token", "consumer_secret"])
def test_redaction_covers_every_secret_name_the_configuration_uses(key: str) -> None:
    event = redact(None, "info", {"event": "x", key: "s3cr3t-value", "nested": {key: "s3cr3t-value"}})
    assert event[key] == MASK and event["nested"] == {key: MASK}
