"""Least privilege on disk and in logs (issue 11, part 9): customer data is owner-only whatever the umask,
no CA file is left in the temporary directory, a template cannot be read from outside the configuration
folder, and an OAuth outage during a token refresh is an ordinary, logged retry."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_cli, run_daemon, wait_for_status

from sfsign.config import ConfigError, Rules, Settings, load_rules
from sfsign.emulator.control_client import ControlClient

GOOD = "Globex - Enterprise Rollout"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """A service manager or container that leaves the umask at 000: every file would be world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


async def test_outbox_and_artifacts_are_owner_only_whatever_the_umask(
    settings: Settings, rules: Rules, control: ControlClient, wide_umask: None
) -> None:
    settings = settings.model_copy(update={"artifact_grace_s": 3600.0})  # keep the PDFs to look at them
    async with run_daemon(settings, rules):
        good = await record_id(control, "Opportunity", GOOD)
        await control.update("Opportunity", good, {"StageName": "Proposal/Price Quote"}, user=REP)
        assert (await wait_for_status(control, "Opportunity", good))["Sign_Status__c"] == "Signed"
        data_dir = settings.data_dir
        outbox_files = [p for p in data_dir.iterdir() if p.name.startswith("outbox.sqlite")]
        assert {p.name for p in outbox_files} >= {"outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"}
        artifacts = sorted((data_dir / "artifacts").iterdir())
        assert any(p.name.endswith(".signed.pdf") for p in artifacts), artifacts
        assert _mode(data_dir) == 0o700
        assert _mode(data_dir / "artifacts") == 0o700
        wide = {p.name: oct(_mode(p)) for p in [*outbox_files, *artifacts] if _mode(p) != 0o600}
        assert not wide, f"customer data readable by others: {wide}"


async def test_an_existing_wide_data_dir_is_tightened(settings: Settings, rules: Rules) -> None:
    settings.data_dir.mkdir(parents=True)
    settings.data_dir.chmod(0o755)  # e.g. created by an operator's mkdir
    async with run_daemon(settings, rules):
        assert _mode(settings.data_dir) == 0o700


async def test_no_ca_file_is_written_to_the_temporary_directory(
    settings: Settings, rules: Rules, control: ControlClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA file written to /tmp and removed on close outlives every kill -9; none is written at all, and
    REST still trusts the configured CA (the record is signed over HTTPS to the emulator's own CA)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    async with run_daemon(settings, rules):
        good = await record_id(control, "Opportunity", GOOD)
        await control.update("Opportunity", good, {"StageName": "Proposal/Price Quote"}, user=REP)
        assert (await wait_for_status(control, "Opportunity", good))["Sign_Status__c"] == "Signed"
        assert sorted(p.name for p in tmp.iterdir()) == []  # checked while running: what a kill -9 leaves
    result = run_cli(["reconcile"], settings, TMPDIR=str(tmp))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp.iterdir()) == []


@pytest.mark.parametrize("template", ["../outside.typ", "{outside_abs}", "templates/escape.typ"])
def test_a_template_outside_the_configuration_folder_is_refused(tmp_path: Path, rules: Rules, template: str) -> None:
    config = tmp_path / "config"
    (config / "templates").mkdir(parents=True)
    outside = tmp_path / "outside.typ"
    outside.write_text("#read(\"/etc/hostname\")\n")
    (config / "templates" / "escape.typ").symlink_to(outside)  # a symlink out counts as outside
    text = rules.source.read_text()
    assert "template: proposal" in text
    rules_file = config / "rules.yaml"
    rules_file.write_text(text.replace("template: proposal", f"template: {template.format(outside_abs=outside)}", 1))
    with pytest.raises(ConfigError) as refused:
        load_rules(rules_file)
    line = next(i for i, row in enumerate(rules_file.read_text().splitlines(), 1) if "template: " in row
                and "proposal" not in row and "quote" not in row)
    assert f"{rules_file}:{line}: template" in str(refused.value)
    assert "outside the templates directory" in str(refused.value)


def test_a_template_inside_the_configuration_folder_is_accepted(tmp_path: Path, rules: Rules) -> None:
    config = tmp_path / "config"
    (config / "templates").mkdir(parents=True)
    (config / "templates" / "mine.typ").write_text("= Proposal\n")
    rules_file = config / "rules.yaml"
    rules_file.write_text(rules.source.read_text().replace("template: proposal", "template: templates/mine.typ", 1))
    loaded = load_rules(rules_file)
    assert (config / "templates" / "mine.typ").resolve() in loaded.templates.values()


async def test_an_oauth_outage_during_token_refresh_is_a_logged_retry(
    settings: Settings, rules: Rules, control: ControlClient, logs: list[MutableMapping[str, Any]]
) -> None:
    """The session expires and the token endpoint answers 503 for a while (Salesforce maintenance): the
    job waits and signs, and nothing is reported as an unexpected failure with a traceback."""
    settings = settings.model_copy(update={"retry_base_s": 0.2})
    async with run_daemon(settings, rules) as daemon:
        good = await record_id(control, "Opportunity", GOOD)
        # Hold the job's first REST call in the org long enough to expire the session under it.
        slow = await control.post("/_control/faults/latency", {"prefix": "/services/data/", "seconds": 3})
        await control.update("Opportunity", good, {"StageName": "Proposal/Price Quote"}, user=REP)
        async with asyncio.timeout(60):
            while True:
                if await daemon.outbox.call(lambda s: s.jobs()):
                    break
                await asyncio.sleep(0.05)
        outage = await control.post("/_control/faults/errors", {"prefix": "/services/oauth2/token", "status": 503,
                                                                 "errorCode": "SERVER_UNAVAILABLE"})
        await control.post("/_control/auth/revoke", {})
        async with asyncio.timeout(60):  # the job met the outage at least once: `sfsign jobs` says why it waits
            while True:
                [waiting] = await daemon.outbox.call(lambda s: s.jobs())
                if waiting.attempts:
                    break
                await asyncio.sleep(0.05)
        for fault in (outage, slow):
            await control._json("DELETE", f"/_control/faults/{fault['id']}")
        assert (await wait_for_status(control, "Opportunity", good))["Sign_Status__c"] == "Signed"
        retried = {s.labels["error_code"]: s.value for m in daemon.metrics.registry.collect()
                   for s in m.samples if s.name == "sfsign_retries_total"}
    assert waiting.error_code == "AUTH_UNAVAILABLE" and "HTTP 503" in str(waiting.last_error), waiting
    assert set(retried) == {"AUTH_UNAVAILABLE"}, retried  # never an UNEXPECTED one (a bug's retry code)
    assert not [e for e in logs if e.get("exc_info")]
    # Each retry's line tells the operator why (the job keeps only the last reason): found by its fields.
    retries = [e for e in logs if {"attempts", "retry_in_s", "error_code", "reason"} <= e.keys()]
    assert retries and all(e["error_code"] == "AUTH_UNAVAILABLE" and "HTTP 503" in e["reason"] for e in retries)
