"""`sfsign status` / `sfsign jobs` rendering and the retention purge, on a real SQLite outbox."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfsign.commands.progress import PageCounter, ProgressLine
from sfsign.commands.status import collect_status, job_line, render_jobs, render_status, status_json, utc_midnight
from sfsign.config import Settings
from sfsign.ops.api_usage import API_USAGE_KEY, format_api_usage, parse_api_usage, record_api_usage, save_api_usage
from sfsign.ops.durations import human_age
from sfsign.ops.retention import DAY_S, expired_artifacts, purge, purge_loop
from sfsign.outbox import JobState, NewJob, Outbox, OutboxStore
from sfsign.salesforce.rest import QueryPage

NOW = 1_767_268_800.0  # 2026-01-01T12:00:00Z
CHANNEL = "/data/OpportunityChangeEvent"


def _new(n: int, *, source: str = "cdc", requested_by: str | None = None) -> NewJob:
    return NewJob(transaction_id=f"tx-{n:04d}", rule="opp", sobject="Opportunity",
                  record_id=f"006{n:012d}AAA", source=source, requested_by=requested_by)


def _backdate(store: OutboxStore, tx: str, *, created_at: float | None = None, updated_at: float | None = None,
              **columns: object) -> None:
    changes = {k: v for k, v in {"created_at": created_at, "updated_at": updated_at, **columns}.items()
               if v is not None}
    sets = ", ".join(f"{k} = ?" for k in changes)
    store.db.execute(f"UPDATE jobs SET {sets} WHERE transaction_id = ?", [*changes.values(), tx])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutboxStore]:
    s = OutboxStore(tmp_path / "outbox.sqlite")
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"data_dir": tmp_path, "job_retention_days": 30, "artifact_grace_s": 3600})


# -------------------------------------------------------------------------------------------- status


def test_status_counts_oldest_active_last_event_usage_and_signed_today(store: OutboxStore) -> None:
    store.commit_event(CHANNEL, 7, [_new(1), _new(2), _new(3), _new(4)])
    _backdate(store, "tx-0001", created_at=NOW - 3 * 3600)  # oldest, still active
    _backdate(store, "tx-0002", created_at=NOW - 5 * 3600, state="done", signed_visible_at=NOW - 600)
    _backdate(store, "tx-0003", created_at=NOW - 60, state="error", last_error="no primary contact")
    _backdate(store, "tx-0004", state="done", signed_visible_at=utc_midnight(NOW) - 1)  # yesterday
    store.db.execute("UPDATE replay SET updated_at = ?", (NOW - 42,))
    store.set_meta(API_USAGE_KEY, format_api_usage(1234, 15000, NOW - 120))

    report = collect_status(store, now=NOW)

    assert report.counts["queued"] == 1 and report.counts["done"] == 2 and report.counts["error"] == 1
    assert report.counts["ltv_pending"] == 0 and set(report.counts) == {s.value for s in JobState}
    assert (report.active, report.errors, report.dead, report.signed_today) == (1, 1, 0, 1)
    assert report.oldest_active is not None and report.oldest_active.transaction_id == "tx-0001"
    assert report.oldest_active.age_s == pytest.approx(3 * 3600)
    data = status_json(report)
    assert json.loads(json.dumps(data)) == data
    assert data["last_event"] == {"channel": CHANNEL, "at": "2026-01-01T11:59:18Z", "age_s": 42.0}
    assert data["api_usage"] == {"used": 1234, "max": 15000, "percent": 8.2, "seen_at": "2026-01-01T11:58:00Z"}
    text = render_status(report)
    for expected in ("3h00m old, queued, transaction tx-0001", "42s ago", "1,234 of 15,000 (8.2 %)",
                     "signed today (UTC)", "1 / 0"):
        assert expected in text, text


def test_status_of_an_empty_outbox_says_none_rather_than_failing(store: OutboxStore) -> None:
    store.set_meta(API_USAGE_KEY, "garbage")
    report = collect_status(store, now=NOW)
    assert report.oldest_active is None and report.last_event_at is None and report.api_usage is None
    data = status_json(report)
    assert data["oldest_active"] is None and data["last_event"] is None and data["api_usage"] is None
    text = render_status(report)
    assert "none received yet" in text and "not recorded yet" in text


def test_status_lists_dead_jobs_with_their_cause_and_what_to_do(store: OutboxStore) -> None:
    store.commit_event(CHANNEL, 1, [_new(1), _new(2)])
    reason = "Gave up after 41 attempts over 3d00h: 503 SERVER_UNAVAILABLE. A person must act: ..."
    _backdate(store, "tx-0002", updated_at=NOW - 7200, state="dead", error_code="SERVER_UNAVAILABLE",
              last_error=reason)
    report = collect_status(store, now=NOW)
    [dead] = report.dead_jobs
    assert (dead.transaction_id, dead.record_id, dead.reason) == ("tx-0002", "006000000000002AAA", reason)
    data = status_json(report)
    assert data["dead_jobs"][0]["dead_since"] == "2026-01-01T10:00:00Z"
    assert "run `sfsign retry tx-0002`" in data["dead_jobs"][0]["action"]
    text = render_status(report)
    assert "a person must act" in text and "sfsign retry tx-0002" in text and "2h00m" in text, text
    _backdate(store, "tx-0002", state="done")
    assert collect_status(store, now=NOW).dead_jobs == () and status_json(collect_status(store))["dead_jobs"] == []


@pytest.mark.parametrize("value", ["", "12/", "1/2@x", "a/b@3", "1/2"])
def test_unreadable_api_usage_is_none(value: str) -> None:
    assert parse_api_usage(value) is None


def test_api_usage_round_trips() -> None:
    usage = parse_api_usage(format_api_usage(80, 100, 1.5))
    assert usage is not None and (usage.used, usage.maximum, usage.seen_at, usage.percent) == (80, 100, 1.5, 80.0)


async def test_the_daemons_api_usage_reaches_status_through_the_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    try:
        stop = asyncio.Event()
        seen: list[tuple[int, int] | None] = [None, (10, 100)]
        task = asyncio.create_task(record_api_usage(outbox, lambda: seen[-1], stop, interval_s=3600))
        async with asyncio.timeout(30):
            while True:
                if await outbox.call(lambda s: s.get_meta(API_USAGE_KEY)) is not None:
                    break
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 30)
        report = await outbox.call(lambda s: collect_status(s))
        assert report.api_usage is not None and (report.api_usage.used, report.api_usage.maximum) == (10, 100)
        assert not await outbox.call(lambda s: save_api_usage(s, None, NOW))  # nothing seen yet: nothing stored
    finally:
        await outbox.close()


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (192, "3m12s"), (18240, "5h04m"), (183600, "2d03h")])
def test_human_age(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


# ---------------------------------------------------------------------------------------------- jobs


def test_jobs_newest_first_filtered_and_without_names_or_document(store: OutboxStore) -> None:
    store.commit_event(CHANNEL, 1, [_new(1, requested_by="lena.hoffmann@northwind.example"), _new(2), _new(3)])
    long_error = "The opportunity has no primary contact. " * 5
    second = store.by_transaction("tx-0002")
    assert second is not None
    second = store.mark_fetched(second, document_json='{"customer": {"name": "Acme Secret GmbH"}}',
                                file_title="Proposal Acme Secret", file_name="Proposal Acme Secret.pdf")
    store.mark_error(second, long_error, "NOT_RENDERABLE")

    lines = [job_line(j, NOW) for j in store.recent_jobs(limit=10)]
    assert [ln["transaction_id"] for ln in lines] == ["tx-0003", "tx-0002", "tx-0001"]
    errors = [job_line(j, NOW) for j in store.recent_jobs(JobState.ERROR)]
    assert [ln["transaction_id"] for ln in errors] == ["tx-0002"]
    assert errors[0]["last_error"] == long_error  # JSON keeps it whole
    assert [ln["transaction_id"] for ln in (job_line(j, NOW) for j in store.recent_jobs(limit=1))] == ["tx-0003"]

    table = render_jobs(lines)
    dumped = json.dumps(lines)
    for leak in ("Acme Secret", "lena.hoffmann", "northwind"):
        assert leak not in table and leak not in dumped
    error_row = next(row for row in table.splitlines() if "tx-0002" in row)
    assert "NOT_RENDERABLE: The opportunity has no primary" in error_row
    assert error_row.rstrip().endswith("…") and long_error.strip() not in table
    assert "006000000000002AAA" in error_row and "error" in error_row


def test_jobs_table_of_nothing() -> None:
    assert render_jobs([]) == "no jobs"


# ------------------------------------------------------------------------------------------ retention


def _finish(store: OutboxStore, tx: str, state: str, age_s: float) -> None:
    _backdate(store, tx, updated_at=NOW - age_s, state=state, done_at=NOW - age_s if state == "done" else None)


def test_purge_removes_old_finished_rows_and_their_sent_audit_but_keeps_active_and_recent(
    store: OutboxStore, settings: Settings
) -> None:
    store.commit_event(CHANNEL, 1, [_new(i) for i in range(1, 7)])
    _finish(store, "tx-0001", "done", 31 * DAY_S)
    _finish(store, "tx-0002", "error", 40 * DAY_S)
    _finish(store, "tx-0003", "dead", 31 * DAY_S)
    _finish(store, "tx-0004", "done", 29 * DAY_S)  # recent enough
    _backdate(store, "tx-0005", updated_at=NOW - 90 * DAY_S, created_at=NOW - 90 * DAY_S)  # queued: never purged
    _backdate(store, "tx-0006", updated_at=NOW - 90 * DAY_S, state="ltv_pending")  # active: never purged
    # tx-0001's audit rows were sent; tx-0002's are still waiting for Salesforce.
    store.db.execute("UPDATE audit SET status = 'sent' WHERE transaction_id IN ('tx-0001', 'tx-0003')")

    dry = purge(store, settings, now=NOW, dry_run=True)
    assert dry.rows.jobs == {"done": 1, "error": 1, "dead": 1} and dry.rows.audit_rows == 2
    assert sum(store.counts().values()) == 6

    result = purge(store, settings, now=NOW)
    assert result.rows.jobs == {"done": 1, "error": 1, "dead": 1} and result.rows.audit_rows == 2
    left = {j.transaction_id for j in store.jobs()}
    assert left == {"tx-0004", "tx-0005", "tx-0006"}
    audit = {r[0] for r in store.db.execute("SELECT DISTINCT transaction_id FROM audit").fetchall()}
    assert audit == {"tx-0002", "tx-0004", "tx-0005", "tx-0006"}  # pending audit waits to be sent

    # Once sent, the audit row of a job that was purged goes on the next pass.
    store.db.execute("UPDATE audit SET status = 'sent' WHERE transaction_id = 'tx-0002'")
    again = purge(store, settings, now=NOW)
    assert again.rows.job_rows == 0 and again.rows.audit_rows == 1


def test_purge_rejects_a_non_positive_retention(store: OutboxStore) -> None:
    with pytest.raises(ValueError):
        store.purge(NOW, 0)


def _artifact(settings: Settings, tx: str, kind: str, mtime: float) -> Path:
    path = settings.data_dir / "artifacts" / f"{tx}.{kind}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"%PDF-")
    os.utime(path, (mtime, mtime))
    return path


def test_artifacts_of_done_or_vanished_jobs_go_after_the_grace(store: OutboxStore, settings: Settings) -> None:
    store.commit_event(CHANNEL, 1, [_new(i) for i in range(1, 5)])
    _finish(store, "tx-0001", "done", 2 * 3600)  # done 2 h ago, grace 1 h: expired
    _finish(store, "tx-0002", "done", 600)  # within the grace
    _finish(store, "tx-0003", "error", 10 * DAY_S)  # `sfsign retry` resumes from its files
    old = NOW - 2 * 3600
    files = {
        "done-expired": _artifact(settings, "tx-0001", "signed.pdf", old),
        "done-recent": _artifact(settings, "tx-0002", "signed.pdf", old),
        "error": _artifact(settings, "tx-0003", "rendered.pdf", old),
        "active": _artifact(settings, "tx-0004", "boxes.json", old),
        "orphan-old": _artifact(settings, "tx-gone", "signed.pdf.tmp", old),
        "orphan-new": _artifact(settings, "tx-new", "rendered.pdf", NOW - 60),
    }

    expired = expired_artifacts(settings.data_dir / "artifacts", store, NOW, settings.artifact_grace_s)
    assert set(expired) == {files["done-expired"], files["orphan-old"]}

    result = purge(store, settings, now=NOW)
    assert set(result.artifacts) == set(expired)
    assert {name for name, p in files.items() if p.exists()} == {"done-recent", "error", "active", "orphan-new"}


def test_an_envelope_jobs_files_stay_for_the_download_link_then_go(store: OutboxStore, settings: Settings) -> None:
    """A job that sent an envelope (its about.json is there) keeps its files for SFSIGN_SIGNING_DOWNLOAD_DAYS
    after it is done (the signing page's download gives the completed PDF); an envelope that ended unsigned
    has nothing to download, and its files go after the grace."""
    store.commit_event(CHANNEL, 1, [_new(i) for i in range(1, 4)])
    _finish(store, "tx-0001", "done", 2 * DAY_S)  # completed two days ago: the link still works (7 days)
    _finish(store, "tx-0002", "done", 8 * DAY_S)  # past the download days
    _backdate(store, "tx-0003", updated_at=NOW - 2 * DAY_S, state="envelope_ended", done_at=NOW - 2 * DAY_S)
    old = NOW - 9 * DAY_S
    files = {f"{tx}.{kind}": _artifact(settings, tx, kind, old)
             for tx in ("tx-0001", "tx-0002", "tx-0003") for kind in ("ltv.pdf", "about.json")}
    expired = expired_artifacts(settings.data_dir / "artifacts", store, NOW, settings.artifact_grace_s,
                                settings.signing_download_days * DAY_S)
    assert {p.name for p in expired} == {"tx-0002.ltv.pdf", "tx-0002.about.json", "tx-0003.ltv.pdf",
                                         "tx-0003.about.json"}
    purge(store, settings, now=NOW)
    assert sorted(name for name, p in files.items() if p.exists()) == ["tx-0001.about.json", "tx-0001.ltv.pdf"]
    later = expired_artifacts(settings.data_dir / "artifacts", store, NOW + 5 * DAY_S, settings.artifact_grace_s,
                              settings.signing_download_days * DAY_S)
    assert {p.name for p in later} == {"tx-0001.about.json", "tx-0001.ltv.pdf"}


def test_no_artifacts_directory_is_nothing_to_purge(store: OutboxStore, settings: Settings) -> None:
    assert expired_artifacts(settings.data_dir / "artifacts", store, NOW, 0) == []


async def test_purge_loop_purges_at_start_and_stops_when_asked(tmp_path: Path, settings: Settings) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    try:
        await outbox.call(lambda s: s.commit_event(CHANNEL, 1, [_new(1), _new(2)]))
        month_ago = time.time() - 31 * DAY_S
        await outbox.call(lambda s: _backdate(s, "tx-0001", updated_at=month_ago, state="done", done_at=month_ago))
        stop = asyncio.Event()
        loop_task = asyncio.create_task(purge_loop(outbox, settings, stop, interval_s=3600))
        async with asyncio.timeout(30):
            while True:  # the first pass runs at start
                if await outbox.call(lambda s: s.by_transaction("tx-0001")) is None:
                    break
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(loop_task, 30)
        assert await outbox.call(lambda s: s.by_transaction("tx-0002")) is not None
    finally:
        await outbox.close()


# ------------------------------------------------------------------------------------- reconcile progress


def test_reconcile_progress_counts_the_pages_of_every_query() -> None:
    """Two pages of one query, then one page of another, as `reconcile` reads them from Salesforce."""
    pages = {
        "q1": QueryPage([{"Id": "a"}] * 2, 3, "/next"),
        "/next": QueryPage([{"Id": "b"}], 3, None),
        "q2": QueryPage([{"Id": "c"}] * 4, 4, None),
    }
    seen: list[tuple[int, int]] = []
    counter = PageCounter(lambda done, total: seen.append((done, total)))
    counter(pages["q1"], True)
    counter(pages["/next"], False)
    counter(pages["q2"], True)
    assert seen == [(2, 3), (3, 3), (7, 7)]


def test_progress_line_overwrites_itself_and_ends_the_line() -> None:
    out = io.StringIO()
    line = ProgressLine("reconciling", stream=out, width=10)
    line(0, 0)
    line(5, 10)
    line.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "\rreconciling [#####-----] 5/10 records" in text


def test_progress_line_silent_when_never_drawn() -> None:
    out = io.StringIO()
    ProgressLine("x", stream=out).close()
    assert out.getvalue() == ""
