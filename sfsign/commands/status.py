"""What `sfsign status` and `sfsign jobs` show: read from the outbox alone, so they work beside a running
daemon (SQLite WAL lets a reader in while the daemon writes) and without reaching Salesforce.

The output is for operators and scripts, so it carries ids, states and error reasons but never document
content, file names, requesters or signer names: those may name customers and people (GDPR).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tabulate import tabulate

from sfsign.ops.api_usage import API_USAGE_KEY, ApiUsage, parse_api_usage
from sfsign.ops.durations import human_age
from sfsign.outbox import ACTIVE_STATES, Job, JobState, OutboxStore, ParkedEvent

ERROR_WIDTH = 60  # characters of `last_error` shown in a table; JSON carries all of it
DEAD_SHOWN = 20  # dead jobs listed by `sfsign status` (newest first); `sfsign jobs --state dead` has them all
PARKED_SHOWN = 10  # newest parked events listed; their payloads stay in the outbox (they may name customers)


@dataclass(frozen=True)
class OldestJob:
    transaction_id: str
    record_id: str
    state: str
    age_s: float


@dataclass(frozen=True)
class DeadJob:
    """A job that failed for its whole retry window: a person must remove the cause and retry it."""

    transaction_id: str
    object: str
    record_id: str
    rule: str
    error_code: str | None
    reason: str | None
    dead_since: float
    action: str


def dead_job(job: Job) -> DeadJob:
    return DeadJob(
        job.transaction_id, job.sobject, job.record_id, job.rule, job.error_code, job.last_error, job.updated_at,
        action=f"remove the cause ({job.error_code or 'see reason'}), then run `sfsign retry {job.transaction_id}` "
        "(or `sfsign retry --all-errors`)",
    )


@dataclass(frozen=True)
class StatusReport:
    generated_at: float
    counts: dict[str, int]  # every state, zeros included, so scripts need no defaults
    active: int
    errors: int
    dead: int
    signed_today: int  # reached `Signed` on the record since 00:00 UTC
    oldest_active: OldestJob | None
    last_event_channel: str | None
    last_event_at: float | None
    api_usage: ApiUsage | None
    dead_jobs: tuple[DeadJob, ...] = ()  # the newest DEAD_SHOWN, each with what to do
    parked_count: int = 0
    parked: tuple[ParkedEvent, ...] = ()  # the newest, without payloads in any output


def utc_midnight(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def collect_status(store: OutboxStore, now: float | None = None) -> StatusReport:
    now = time.time() if now is None else now
    found = store.counts()
    counts = {state.value: int(found.get(state.value, 0)) for state in JobState}
    oldest = store.oldest_active()
    last = store.last_event()
    return StatusReport(
        generated_at=now,
        counts=counts,
        active=sum(counts[s.value] for s in ACTIVE_STATES),
        errors=counts[JobState.ERROR.value],
        dead=counts[JobState.DEAD.value],
        signed_today=store.signed_visible_since(utc_midnight(now)),
        oldest_active=OldestJob(oldest.transaction_id, oldest.record_id, oldest.state.value,
                                max(0.0, now - oldest.created_at)) if oldest else None,
        last_event_channel=last[0] if last else None,
        last_event_at=last[1] if last else None,
        api_usage=parse_api_usage(store.get_meta(API_USAGE_KEY)),
        dead_jobs=tuple(dead_job(j) for j in store.recent_jobs(JobState.DEAD, limit=DEAD_SHOWN))
        if counts[JobState.DEAD.value] else (),
        parked_count=store.parked_count(),
        parked=tuple(store.parked_events(PARKED_SHOWN)),
    )


# ------------------------------------------------------------------------------------------ formatting


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_json(report: StatusReport) -> dict[str, Any]:
    usage = report.api_usage
    return {
        "generated_at": iso(report.generated_at),
        "counts": report.counts,
        "active": report.active,
        "errors": report.errors,
        "dead": report.dead,
        "signed_today": report.signed_today,
        "oldest_active": {**asdict(report.oldest_active), "age_s": round(report.oldest_active.age_s, 1)}
        if report.oldest_active else None,
        "last_event": {
            "channel": report.last_event_channel,
            "at": iso(report.last_event_at),
            "age_s": round(report.generated_at - report.last_event_at, 1),
        } if report.last_event_at is not None else None,
        "api_usage": {"used": usage.used, "max": usage.maximum, "percent": usage.percent,
                      "seen_at": iso(usage.seen_at)} if usage else None,
        "dead_jobs": [{**asdict(d), "dead_since": iso(d.dead_since)} for d in report.dead_jobs],
        "parked_events": {
            "count": report.parked_count,
            "newest": [{"id": p.id, "channel": p.channel, "replay_id": p.replay_id, "reason": p.reason,
                        "attempts": p.attempts, "parked_at": iso(p.parked_at)} for p in report.parked],
        },
    }


def render_status(report: StatusReport) -> str:
    now = report.generated_at
    states = [(state, n) for state, n in report.counts.items() if n or state in ("queued", "done", "error", "dead")]
    oldest = report.oldest_active
    usage = report.api_usage
    facts = [
        ("active jobs", str(report.active)),
        ("oldest active job",
         f"{human_age(oldest.age_s)} old, {oldest.state}, transaction {oldest.transaction_id} "
         f"(record {oldest.record_id})" if oldest else "none"),
        ("last event",
         f"{human_age(now - report.last_event_at)} ago ({iso(report.last_event_at)}) on {report.last_event_channel}"
         if report.last_event_at is not None else "none received yet"),
        ("API usage",
         f"{usage.used:,} of {usage.maximum:,} ({usage.percent} %), seen {human_age(now - usage.seen_at)} ago"
         if usage else "not recorded yet"),
        ("signed today (UTC)", str(report.signed_today)),
        ("errors / dead", f"{report.errors} / {report.dead}" + ("  (see `sfsign jobs --state error`)"
                                                               if report.errors or report.dead else "")),
        ("parked events", str(report.parked_count) + (
            f"  (newest: {report.parked[0].channel} replay id {report.parked[0].replay_id}, "
            f"{human_age(now - report.parked[0].parked_at)} ago: {_short(report.parked[0].reason, ERROR_WIDTH)})"
            if report.parked else "")),
    ]
    text = tabulate(states, headers=["state", "jobs"], tablefmt="simple") + "\n\n" + tabulate(facts, tablefmt="plain")
    if report.dead_jobs:
        rows = [[d.transaction_id, d.object, d.record_id, human_age(now - d.dead_since), d.action,
                 _short(d.reason, ERROR_WIDTH)] for d in report.dead_jobs]
        more = report.dead - len(report.dead_jobs)
        text += ("\n\ndead jobs: a person must act\n"
                 + tabulate(rows, headers=["transaction", "object", "record", "dead for", "what to do", "reason"],
                            tablefmt="simple", disable_numparse=True)
                 + (f"\n... and {more} more (`sfsign jobs --state dead`)" if more > 0 else ""))
    return text


# ----------------------------------------------------------------------------------------------- jobs


def job_line(job: Job, now: float) -> dict[str, Any]:
    """One job as operators see it. Deliberately no document_json, file_name, requested_by or signer."""
    return {
        "transaction_id": job.transaction_id,
        "object": job.sobject,
        "record_id": job.record_id,
        "rule": job.rule,
        "state": job.state.value,
        "attempts": job.attempts,
        "level": job.ltv_level or job.level,
        "source": job.source,
        "created_at": iso(job.created_at),
        "age_s": round(max(0.0, now - job.created_at), 1),
        "error_code": job.error_code,
        "last_error": job.last_error,
    }


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def render_jobs(lines: list[dict[str, Any]], error_width: int = ERROR_WIDTH) -> str:
    if not lines:
        return "no jobs"
    rows = [
        [ln["transaction_id"], ln["object"], ln["record_id"], ln["rule"], ln["state"], ln["attempts"],
         ln["level"] or "", human_age(ln["age_s"]),
         _short(f"{ln['error_code']}: {ln['last_error']}" if ln["error_code"] else ln["last_error"], error_width)]
        for ln in lines
    ]
    headers = ["transaction", "object", "record", "rule", "state", "tries", "level", "age", "last error"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
