"""What a failing chaos run leaves behind, so the failure explains itself without a replay.

A chaos failure depends on timing (the seed alone does not replay it: seed 2545358395 lost 8 records once
and passed when replayed), so the evidence must be taken from the run that failed: the outbox's replay
positions, jobs, pending reconciliations and parked events; what the emulator's Bayeux side saw (every
subscription, with its replay id and answer, and the clients it still holds); and the daemon logs' stream,
intake and reconciliation lines. It is printed with the invariant's failure and saved beside the daemon logs
(`chaos-diagnostics.txt` in the run's directory).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

# Log events that tell what the stream, intake and reconciliation did (matched as substrings of `event`).
TELLING_EVENTS = ("salesforce.stream", "subscribed", "reconcil", "park", "event handling failed", "replay",
                  "intake", "disconnected", "resubscribed")
TELLING_LINES = 80
LAST_LINES = 20
LINE_MAX = 400
SUBSCRIPTIONS_SHOWN = 40


def outbox_report(db_path: Path, ids: list[str]) -> list[str]:
    """Replay positions, jobs by state, the records of the run without a job, pending reconciliations and
    parked events, read from the daemon's outbox (the daemon is stopped by then)."""
    if not db_path.exists():
        return ["outbox: no database file"]
    conn = sqlite3.connect(str(db_path), timeout=30)
    conn.row_factory = sqlite3.Row
    lines: list[str] = []
    try:
        lines.append("outbox replay positions:")
        lines += [f"  {r['channel']}: {r['replay_id']} (updated {r['updated_at']:.3f})"
                  for r in conn.execute("SELECT * FROM replay ORDER BY channel")]
        jobs = [dict(r) for r in conn.execute("SELECT record_id, state, source, attempts, last_error FROM jobs")]
        lines.append(f"outbox jobs by state: {dict(Counter(j['state'] for j in jobs))}; "
                     f"by source: {dict(Counter(j['source'] for j in jobs))}")
        with_job = {j["record_id"] for j in jobs}
        missing = [rid for rid in ids if rid not in with_job]
        lines.append(f"records of the run without a job ({len(missing)}): {missing}")
        lines += [f"  job of {j['record_id']}: {j['state']} after {j['attempts']} attempts ({j['last_error']})"
                  for j in jobs if j["state"] not in ("done",)][:20]
        pending = [f"{r['key']}={r['value']}" for r in conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'reconcile:%' OR key = 'first_subscribed_at'")]
        lines.append(f"outbox meta (reconcile requests, first subscription): {pending}")
        with contextlib.suppress(sqlite3.OperationalError):
            parked = [dict(r) for r in conn.execute(
                "SELECT channel, replay_id, reason FROM parked_events ORDER BY id DESC LIMIT 10")]
            lines.append(f"parked events (latest {len(parked)}): {parked}")
    finally:
        conn.close()
    return lines


def streaming_report(subscriptions: list[dict[str, Any]], clients: Any) -> list[str]:
    """The emulator's side: the last subscriptions (Bayeux client or Pub/Sub rpc, channel, where it started,
    answer) and the clients (CometD) or open streams (Pub/Sub) left."""
    lines = [f"emulator subscriptions (last {SUBSCRIPTIONS_SHOWN} of {len(subscriptions)}):"]
    for entry in subscriptions[-SUBSCRIPTIONS_SHOWN:]:
        outcome = "ok" if entry.get("successful") else f"refused: {entry.get('error')}"
        who = entry.get("clientId") or entry.get("rpcId")
        start = entry["replay"] if "replay" in entry else f"{entry.get('preset')} {entry.get('position')}"
        lines.append(f"  {entry.get('at', 0):.3f} client {str(who)[:8]} {entry.get('channel') or entry.get('topic')} "
                     f"from {start}: {outcome}")
    lines.append(f"emulator clients or streams: {clients}")
    return lines


def log_report(log_files: list[Path]) -> list[str]:
    """Per daemon log: its stream/intake/reconciliation lines (the last `TELLING_LINES`) and its tail."""
    lines: list[str] = []
    for path in log_files:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            lines.append(f"{path.name}: unreadable")
            continue
        telling = [line for line in text if _telling(line)]
        lines.append(f"{path.name}: {len(text)} lines; stream/intake/reconcile lines (last {TELLING_LINES} of "
                     f"{len(telling)}):")
        lines += [f"  {line[:LINE_MAX]}" for line in telling[-TELLING_LINES:]]
        lines.append(f"{path.name}: last {LAST_LINES} lines:")
        lines += [f"  {line[:LINE_MAX]}" for line in text[-LAST_LINES:]]
    return lines


def _telling(line: str) -> bool:
    try:
        event = str(json.loads(line).get("event", ""))
    except (ValueError, AttributeError):
        return True  # not a log record (a traceback): always worth showing
    return any(word in event for word in TELLING_EVENTS)
