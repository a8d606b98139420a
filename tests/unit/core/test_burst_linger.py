"""How long a batch may wait during a burst (`SalesforceGateway.linger_for`): spend API calls on latency
while the org's daily use is below `api_latency_share`, save them above it. The gateway runs with fake
collaborators (no REST client, no outbox; a fake API usage reading) and real batchers."""

from __future__ import annotations

from pathlib import Path

from sfsign.config import Rules
from sfsign.gateway import SalesforceGateway
from sfsign.governor import ApiGovernor
from sfsign.ops.metrics import Metrics
from sfsign.worker_config import WorkerConfig


def _no_rules() -> Rules:
    raise AssertionError("choosing a linger reads no rules")


def _gateway_with_fake_usage(tmp_path: Path, used: int, running: int) -> SalesforceGateway:
    config = WorkerConfig(artifacts_dir=tmp_path, cpu_slots=4, batch_linger_s=0.05, batch_linger_burst_s=8.0,
                          batch_linger_burst_first_s=0.25, api_latency_share=0.5)
    return SalesforceGateway(rest=None, outbox=None, config=config, rules=_no_rules,  # type: ignore[arg-type]
                             running=lambda: running, metrics=Metrics(),
                             governor=ApiGovernor(lambda: (used, 100_000), threshold=0.8))


def test_a_trickle_never_waits_long_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=90_000, running=2)  # not a burst, even with little budget
    assert gateway.linger_for("upload") == 8.0  # the governor says the budget is tight: big batches
    quiet = _gateway_with_fake_usage(tmp_path, used=10, running=2)
    assert quiet.linger_for("fetch") == 0.05
    assert quiet.linger_for("write-back") == 0.05


def test_a_burst_below_half_the_budget_starts_fast_and_doubles_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=40_000, running=100)
    waits = []
    for _ in range(7):
        waits.append(gateway.linger_for("upload"))
        gateway.note_batch("upload", 10)  # what the upload batcher reports after each call
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert gateway.linger_for("write-back") == 0.05  # write-backs follow the uploads as they return
    assert gateway.linger_for("fetch") == 0.25  # each batcher counts its own batches


def test_a_burst_above_half_the_budget_waits_the_long_linger_with_fake_usage(tmp_path: Path) -> None:
    gateway = _gateway_with_fake_usage(tmp_path, used=50_000, running=100)
    assert [gateway.linger_for(n) for n in ("fetch", "upload", "write-back")] == [8.0, 8.0, 8.0]


def test_the_next_burst_starts_fast_again_with_fake_usage(tmp_path: Path) -> None:
    running = [100]
    gateway = _gateway_with_fake_usage(tmp_path, used=1_000, running=0)
    gateway._running = lambda: running[0]
    for _ in range(3):
        gateway.note_batch("upload", 10)
    assert gateway.linger_for("upload") == 2.0
    running[0] = 1
    assert gateway.linger_for("upload") == 0.05  # the burst is over
    running[0] = 100
    assert gateway.linger_for("upload") == 0.25
