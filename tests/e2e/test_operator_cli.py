"""The operator's commands as ops run them (a subprocess configured by environment) against the outbox of
a daemon that signed a document on the emulator: `status`, `jobs`, `render` and `purge`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from e2e_support import REP, cli_env, record_id, run_cli, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import JobState, NewJob, OutboxStore

ACME = "Acme Industries - Platform Renewal 2027"
DAY_S = 86400.0


def _page_texts() -> Callable[[bytes], list[str]]:
    """The documents tests' text extractor (tests/unit/documents/conftest.py), loaded by path."""
    path = Path(__file__).parents[1] / "unit" / "documents" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_documents_conftest", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
        spec.loader.exec_module(module)
    return module.extract_page_texts


async def _cli(args: list[str], settings: Settings) -> tuple[str, str]:
    result = await asyncio.to_thread(run_cli, args, settings)
    assert result.returncode == 0, f"sfsign {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout, result.stderr


async def _sign_acme(settings: Settings, rules: Rules, control: ControlClient) -> tuple[str, str]:
    """Sign one proposal with the daemon; its log lines must carry ids, never names or e-mail addresses."""
    opp = await record_id(control, "Opportunity", ACME)
    with structlog.testing.capture_logs() as logs:
        async with run_daemon(settings, rules) as daemon:
            await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
            record = await wait_for_status(control, "Opportunity", opp)
            [job] = await settled_jobs(daemon)
    assert record["Sign_Status__c"] == "Signed" and job.state is JobState.DONE, record
    [account] = await control.query(f"SELECT Account.Name FROM Opportunity WHERE Id = '{opp}'")
    # The capture saw the job's lines (queued, with its ids; signed, with its latency) — capture_logs leaves
    # the bound context out, so only the ids a line carries itself are there.
    assert any(e.get("transaction_id") == job.transaction_id for e in logs), logs
    assert any("end_to_end_ms" in e for e in logs), logs
    lines = "\n".join(repr(entry) for entry in logs)
    for personal in (str(account["Account"]["Name"]), "Acme", REP, REP.split("@")[0].replace(".", " ").title()):
        assert personal not in lines, f"{personal!r} in the daemon's log lines"
    return opp, job.transaction_id


async def test_status_and_jobs_show_the_signed_document_without_customer_data(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp, tx = await _sign_acme(settings, rules, control)
    [account] = await control.query(f"SELECT Account.Name FROM Opportunity WHERE Id = '{opp}'")
    customer = str(account["Account"]["Name"])

    out, _ = await _cli(["status", "--json"], settings)
    status = json.loads(out)
    assert status["counts"]["done"] == 1 and status["active"] == 0 and status["signed_today"] == 1
    assert status["errors"] == 0 and status["dead"] == 0 and status["oldest_active"] is None
    assert status["last_event"]["channel"] == "/data/OpportunityChangeEvent"
    table, _ = await _cli(["status"], settings)
    assert "signed today (UTC)" in table and "done" in table

    out, _ = await _cli(["jobs", "--json"], settings)
    [line] = json.loads(out)
    assert (line["transaction_id"], line["record_id"], line["state"], line["level"]) == (tx, opp, "done", "B-B")
    jobs_table, _ = await _cli(["jobs", "--state", "done"], settings)
    assert tx in jobs_table and opp in jobs_table
    nothing, _ = await _cli(["jobs", "--state", "error"], settings)
    assert nothing.strip() == "no jobs"
    for output in (out, jobs_table, table):
        assert customer not in output and "Proposal" not in output  # no names, no file names


async def test_render_previews_a_real_record_without_signing_or_uploading(
    settings: Settings, rules: Rules, control: ControlClient, tmp_path: Path
) -> None:
    opp, _ = await _sign_acme(settings, rules, control)
    [account] = await control.query(f"SELECT Account.Name FROM Opportunity WHERE Id = '{opp}'")
    before_files = await control.files()
    before = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c"])

    target = tmp_path / "preview.pdf"
    out, _ = await _cli(["render", "--record", opp, "-o", str(target)], settings)
    assert "unsigned preview" in out
    pdf = target.read_bytes()
    assert pdf.startswith(b"%PDF-") and b"/ByteRange" not in pdf  # no signature dictionary
    text = "\n".join(_page_texts()(pdf))
    assert str(account["Account"]["Name"]) in text and "PREVIEW - NOT SIGNED" in text

    assert len(await control.files()) == len(before_files)  # no ContentVersion
    assert await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c"]) == before

    wrong = await asyncio.to_thread(
        run_cli, ["render", "--record", opp, "--rule", "no-such-rule", "-o", str(tmp_path / "x.pdf")], settings
    )
    assert wrong.returncode == 1 and "no rule 'no-such-rule'" in wrong.stderr and "Traceback" not in wrong.stderr


async def test_purge_removes_old_finished_rows_and_keeps_active_ones(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    _, tx = await _sign_acme(settings, rules, control)
    month_ago = time.time() - 31 * DAY_S
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        store.commit_event(None, None, [NewJob(transaction_id="tx-old-but-active", rule="opportunity-proposal",
                                               sobject="Opportunity", record_id="006000000000099AAA", source="cdc")])
        store.db.execute("UPDATE jobs SET updated_at = ?, created_at = ?", (month_ago, month_ago))
        leftover = settings.data_dir / "artifacts" / f"{tx}.signed.pdf"
        leftover.parent.mkdir(exist_ok=True)
        leftover.write_bytes(b"%PDF-")
    finally:
        store.close()

    dry, _ = await _cli(["purge", "--dry-run"], settings)
    assert "would delete 1 job row(s) older than 30 days (done: 1)" in dry and "1 artifact file(s)" in dry
    assert leftover.exists()
    out, _ = await _cli(["purge"], settings)
    assert "deleted 1 job row(s)" in out

    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        assert store.by_transaction(tx) is None
        assert store.by_transaction("tx-old-but-active") is not None
    finally:
        store.close()
    assert not leftover.exists()
    again, _ = await _cli(["purge"], settings)
    assert "deleted 0 job row(s)" in again


def _reconcile_on_a_terminal(settings: Settings) -> tuple[int, str, str]:
    """`sfsign reconcile --since ...` with stderr on a pseudo-terminal, as an operator at a shell runs it."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "sfsign.cli", "reconcile", "--since", "2020-01-01"],
                              env=cli_env(settings), stdout=subprocess.PIPE, stderr=secondary, text=True,
                              timeout=120, check=False)
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.returncode, proc.stdout, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)


async def test_reconcile_draws_progress_on_a_terminal_only(settings: Settings, control: ControlClient) -> None:
    for name in (ACME, "Globex - Enterprise Rollout"):
        opp = await record_id(control, "Opportunity", name)
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)

    code, out, terminal = await asyncio.to_thread(_reconcile_on_a_terminal, settings)
    assert code == 0 and "2 job(s) queued" in out, out + terminal
    assert "\rreconciling [" in terminal and "2/2 records" in terminal, terminal

    piped = await asyncio.to_thread(run_cli, ["reconcile", "--since", "2020-01-01"], settings)
    assert piped.returncode == 0 and "0 job(s) queued" in piped.stdout  # already queued: no duplicates
    assert "reconciling [" not in piped.stderr
