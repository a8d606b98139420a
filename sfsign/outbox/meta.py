"""Every key of the outbox's `meta` table, in one place: each one is a small fact that must survive a restart
(or be read by another process, like `sfsign status`), and two writers must never pick one key by accident.
"""

from __future__ import annotations

from datetime import datetime

# When the daemon first had every channel subscribed (ISO 8601 UTC, written once): a later start without a
# replay position reconciles, and the periodic reconciliation never reaches back before it.
FIRST_SUBSCRIBED_KEY = "first_subscribed_at"
# Rewritten by each readiness probe (/readyz): proves the outbox takes a write right now.
OPS_PROBE_KEY = "ops_write_probe"
# `reconcile:<sobject>`: a reconciliation requested (an overflow event, a channel without position) and not
# yet done; persisted first, so a crash in between cannot lose it. Its value is the time of the latest request
# (ISO 8601 UTC), then `RECONCILE_SINCE` and a time when only records changed since then are asked for (a
# stream gap: what sat in a trigger state before sfsign ran is the operator's call).
RECONCILE_PREFIX = "reconcile:"
RECONCILE_SINCE = " since "
# The last `Sforce-Limit-Info: api-usage=used/max` the daemon saw, "used/max@epoch" (`sfsign.ops.api_usage`).
API_USAGE_KEY = "api_usage"

ALL_KEYS = (FIRST_SUBSCRIBED_KEY, OPS_PROBE_KEY, API_USAGE_KEY)
ALL_PREFIXES = (RECONCILE_PREFIX,)


def reconcile_key(sobject: str) -> str:
    """The key that says `sobject` waits for a reconciliation."""
    return f"{RECONCILE_PREFIX}{sobject}"


def reconcile_value(requested_at: str, since: datetime | None) -> str:
    """The value of a `reconcile:` key: when it was requested, and the bound of its records if any."""
    return requested_at if since is None else f"{requested_at}{RECONCILE_SINCE}{since.isoformat()}"


def reconcile_since(value: str) -> datetime | None:
    """The bound a `reconcile:` value asks for; None: every record (a value written before bounds existed)."""
    _, found, since = value.partition(RECONCILE_SINCE)
    return datetime.fromisoformat(since) if found else None
