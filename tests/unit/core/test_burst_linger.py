"""When a batch goes during a burst (`SalesforceGateway.linger_for` and `early`): spend API calls on latency
while the org's daily use is below `api_latency_share` (a small first fetch, the first upload at once, the
second with half of what is left), save them above it; and when a burst is short enough that its records
need no `Pending` (`written_within`). The gateway runs with fake collaborators (no REST client, no outbox; a
fake API usage reading, and a fake clock where time matters) and real batchers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfsign.config import Rules
from sfsign.gateway import SalesforceGateway
from sfsign.governor import ApiGovernor
from sfsign.ops.metrics import Metrics
from sfsign.outbox import JobState
from sfsign.worker_config import WorkerConfig


def _no_rules() -> Rules:
    raise AssertionError("choosing when a batch goes reads no rules")


def _gateway_with_fake_usage(tmp_path: Path, used: int, running: int) -> SalesforceGateway:
    config = WorkerConfig(artifacts_dir=tmp_path, cpu_slots=4, batch_linger_s=0.05, batch_linger_burst_s=8.0,
                          batch_linger_burst_first_s=0.25, api_latency_share=0.5)
    return SalesforceGateway(rest=None, outbox=None, config=config, rules=_no_rules,  # type: ignore[arg-type]
                             running=lambda: running, metrics=Metrics(),
                             governor=ApiGovernor(lambda: (used, 100_000), threshold=0.8))


def _jobs_in(gateway: SalesforceGateway, state: JobState, ids: range) -> None:
    for job_id in ids:
        gateway.track(job_id, state)


def test_a_trickle_never_waits_long_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=90_000, running=2)  # not a burst, even with little budget
    assert gateway.linger_for("upload") == 8.0  # the governor says the budget is tight: big batches
    quiet = _gateway_with_fake_usage(tmp_path, used=10, running=2)
    assert quiet.linger_for("fetch") == 0.05
    assert quiet.linger_for("write-back") == 0.05
    assert [quiet.early(n, 1, 1) for n in ("fetch", "upload", "write-back")] == [None, None, None]
    quiet.track(1, JobState.FETCHED)  # a document in the pool: the next fetch lingers the short linger
    assert quiet.early("fetch", 1, 1) is False


def test_a_burst_fetches_a_few_records_first_then_while_the_pool_runs_dry_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=40_000, running=100)
    assert gateway.linger_for("fetch") == 0.25  # the first fetch waits at most this long for its records
    assert gateway.early("fetch", 2, 100) is True  # the pool is idle: the first records go at once
    gateway.note_batch("fetch", 2)
    _jobs_in(gateway, JobState.FETCHED, range(2))
    assert gateway.early("fetch", 20, 98) is None  # the pool has work: once the arrivals settle (or linger)
    assert gateway.linger_for("fetch") == 8.0  # at the latest
    _jobs_in(gateway, JobState.FETCHED, range(2, 8))
    assert gateway.early("fetch", 10, 92) is False  # twice the slots at hand: later arrivals join these few
    assert gateway.early("fetch", 90, 92) is None  # many: once the arrivals settle, as the batcher would
    _jobs_in(gateway, JobState.SIGNED, range(8))  # the pool has nothing fetched left
    assert gateway.early("fetch", 3, 92) is True  # even a few


def test_a_burst_uploads_the_first_document_at_once_then_half_then_the_rest_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=40_000, running=100)
    assert gateway.early("upload", 1, 100) is True  # the first record shows Signed within about a second
    gateway.note_batch("upload", 1)
    assert gateway.early("upload", 30, 99) is None  # lingers (at most the burst linger) ...
    assert gateway.linger_for("upload") == 8.0
    assert gateway.early("upload", 50, 99) is True  # ... until it holds as many as are still to come
    gateway.note_batch("upload", 50)
    assert gateway.early("upload", 45, 49) is None  # the rest in one more round, once every job has joined
    assert gateway.early("write-back", 1, 100) is None


def test_a_burst_writes_an_upload_batch_back_as_one_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=40_000, running=100)
    gateway.note_uploaded(48)  # 50 files sent, 2 refused: 48 jobs go on to their write-back
    assert gateway.early("write-back", 40, 100) is None  # the others are still recording their upload ...
    assert gateway.linger_for("write-back") == 1.0  # ... for at most this long
    assert gateway.early("write-back", 48, 100) is True  # all there: one call
    gateway.note_batch("write-back", 48)
    assert gateway.early("write-back", 1, 100) is None  # (an LTV write-back, say: the batcher's own rules)


def test_a_burst_above_half_the_budget_waits_the_long_linger_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=50_000, running=100)
    assert [gateway.linger_for(n) for n in ("fetch", "upload", "write-back")] == [8.0, 8.0, 8.0]
    assert [gateway.early(n, 50, 50) for n in ("fetch", "upload", "write-back")] == [None, None, None]


def test_the_next_burst_starts_fast_again_with_fake_usage(tmp_path: Path) -> None:
    running = [100]
    gateway = _gateway_with_fake_usage(tmp_path, used=1_000, running=0)
    gateway._running = lambda: running[0]
    gateway.note_batch("upload", 1)
    gateway.note_batch("upload", 50)
    assert gateway.early("upload", 1, 40) is None
    running[0] = 1
    assert gateway.linger_for("upload") == 0.05  # the burst is over
    running[0] = 100
    assert gateway.early("upload", 1, 100) is True


def test_a_short_burst_is_known_once_the_pool_kept_a_pace_with_fake_clock_and_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("sfsign.gateway.time.monotonic", lambda: now[0])
    gateway = _gateway_with_fake_usage(tmp_path, used=1_000, running=100)
    _jobs_in(gateway, JobState.QUEUED, range(100))
    assert gateway.linger_for("fetch") == 0.25  # the burst begins (t = 0)
    _jobs_in(gateway, JobState.FETCHED, range(100))
    now[0] += 0.5  # the fetch took a while: the pace counts from the first document signed
    gateway.track(0, JobState.SIGNED)
    now[0] += 2.0
    _jobs_in(gateway, JobState.SIGNED, range(1, 41))  # 40 more in 2 s: 20 documents a second
    assert not gateway.written_within(6.0)  # no upload and write-back yet: how long they take is unknown
    gateway.note_call("upload", 0.2)
    gateway.note_call("write-back", 0.1)
    # 59 still to sign at 20 a second, then 0.3 s of calls: all written within 3.25 s.
    assert gateway.written_within(3.3)
    assert not gateway.written_within(3.2)
    now[0] += 8.0  # the pool stalls: 40 in 10 s is 4 a second, 15 s for the other 59
    assert not gateway.written_within(6.0)


def test_no_pace_is_known_before_the_pool_signed_as_many_as_it_holds_with_fake_clock_and_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("sfsign.gateway.time.monotonic", lambda: now[0])
    gateway = _gateway_with_fake_usage(tmp_path, used=1_000, running=100)
    _jobs_in(gateway, JobState.FETCHED, range(100))
    assert gateway.linger_for("fetch") == 0.25  # the burst begins
    gateway.note_call("upload", 0.1)
    gateway.note_call("write-back", 0.1)
    now[0] += 0.5
    _jobs_in(gateway, JobState.SIGNED, range(3))  # fewer than the 4 CPU slots: no pace yet
    assert not gateway.written_within(60.0)
