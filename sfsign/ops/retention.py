"""Data minimisation (GDPR): finished job rows go after `job_retention_days`, ended envelopes lose their
recipients' personal data after the same time (`outbox.envelope_retention`), and rendered or signed PDFs
of finished jobs go after `artifact_grace_s`.

The signed file lives in Salesforce; sfsign's copy on disk, its job rows and its envelopes' people only
serve retries, the signing links and support, so they are kept no longer than that needs. Active jobs,
live envelopes and their artifacts are never touched, and an `error`/`dead` job keeps its artifacts and its
envelope (a `sfsign retry` resumes from them) until its row expires.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from sfsign.aio import wait_any
from sfsign.artifacts import ABOUT
from sfsign.config import Settings
from sfsign.outbox import JobState, Outbox, OutboxStore, PurgeResult

log = structlog.get_logger("sfsign.retention")

DAY_S = 86400.0


@dataclass(frozen=True)
class RetentionResult:
    rows: PurgeResult
    artifacts: list[Path]  # files deleted (or, dry run, that would be)
    envelopes: int = 0  # ended envelopes whose personal data was purged (or would be)


def artifacts_dir(settings: Settings) -> Path:
    """Where the worker keeps a job's files (`WorkerConfig.artifacts_dir` as the daemon sets it)."""
    return settings.data_dir / "artifacts"


def expired_artifacts(directory: Path, store: OutboxStore, now: float, grace_s: float,
                      download_s: float = 0.0) -> list[Path]:
    """Files `<transaction id>.<kind>` whose job is done or its envelope ended (for longer than the grace),
    or gone.

    A job that is gone was purged, or the file is a leftover of a crash: nothing will read it again.
    For a finished job the grace counts from `done_at`; for a file without a job, from its modification time.
    A done job that sent an envelope (its `about.json` is there) keeps its files at least `download_s`
    (SFSIGN_SIGNING_DOWNLOAD_DAYS): the signing page's download link gives the completed PDF that long. An
    envelope that ended unsigned has nothing to download: its files go after the grace.
    """
    files = _artifact_files(directory)
    return _expired(files, store.job_states(_transaction_ids(files)), now, grace_s, download_s)


def _artifact_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []


def _transaction_ids(files: list[Path]) -> list[str]:
    return [p.name.split(".", 1)[0] for p in files]


def _expired(files: list[Path], states: dict[str, tuple[JobState, float | None]], now: float, grace_s: float,
             download_s: float = 0.0) -> list[Path]:
    expired = []
    envelopes = {p.name.split(".", 1)[0] for p in files if p.name.endswith(f".{ABOUT}")}
    for path in files:
        transaction_id = path.name.split(".", 1)[0]
        known = states.get(transaction_id)
        completed = transaction_id in envelopes and known is not None and known[0] is JobState.DONE
        keep_s = max(grace_s, download_s) if completed else grace_s
        if known is None:
            try:
                since = path.stat().st_mtime
            except FileNotFoundError:  # the worker removed it meanwhile
                continue
        elif known[0] in (JobState.DONE, JobState.ENVELOPE_ENDED):
            since = known[1] if known[1] is not None else path.stat().st_mtime
        else:
            continue
        if since + keep_s <= now:
            expired.append(path)
    return sorted(expired)


def purge(store: OutboxStore, settings: Settings, now: float | None = None, *, dry_run: bool = False
          ) -> RetentionResult:
    """Expired job rows first, then envelopes and artifacts, so what the rows just purged leave goes in the
    same pass."""
    now = time.time() if now is None else now
    rows = store.purge(now, settings.job_retention_days * DAY_S, dry_run=dry_run)
    envelopes = store.purge_envelopes(now, settings.job_retention_days * DAY_S,
                                      settings.signing_download_days * DAY_S, dry_run=dry_run)
    files = expired_artifacts(artifacts_dir(settings), store, now, settings.artifact_grace_s,
                              settings.signing_download_days * DAY_S)
    if not dry_run:
        _unlink_all(files)
    return RetentionResult(rows, files, envelopes)


async def purge_outbox(outbox: Outbox, settings: Settings, now: float | None = None) -> RetentionResult:
    """`purge` for the daemon: the rows through the outbox's own thread, the files in an executor, so
    neither the event loop nor the outbox thread waits on the artifacts directory."""
    now = time.time() if now is None else now
    rows = await outbox.purge(now, settings.job_retention_days * DAY_S)
    envelopes = await outbox.purge_envelopes(now, settings.job_retention_days * DAY_S,
                                             settings.signing_download_days * DAY_S)
    loop = asyncio.get_running_loop()
    files = await loop.run_in_executor(None, _artifact_files, artifacts_dir(settings))
    states = await outbox.job_states(_transaction_ids(files))
    expired = await loop.run_in_executor(None, _expired, files, states, now, settings.artifact_grace_s,
                                         settings.signing_download_days * DAY_S)
    await loop.run_in_executor(None, _unlink_all, expired)
    return RetentionResult(rows, expired, envelopes)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def purge_loop(outbox: Outbox, settings: Settings, stop: asyncio.Event, interval_s: float | None = None) -> None:
    """Run the purge at start and then every `interval_s` (default: hourly, or as often as the grace
    needs, at least a minute apart) until `stop` is set. A failed pass is logged and retried next time:
    retention must never stop the daemon."""
    every = interval_s if interval_s is not None else min(3600.0, max(60.0, settings.artifact_grace_s))
    while not stop.is_set():
        try:
            result = await purge_outbox(outbox, settings)
            if result.rows.job_rows or result.rows.audit_rows or result.artifacts or result.envelopes:
                # Counts only: the rows and files name records and customers.
                log.info("retention purge", jobs=result.rows.jobs, audit_rows=result.rows.audit_rows,
                         artifacts=len(result.artifacts), envelopes_anonymised=result.envelopes)
        except Exception as exc:
            log.error("retention purge failed; will retry", error=f"{type(exc).__name__}: {exc}")
        await wait_any(stop, within_s=every)
