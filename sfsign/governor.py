"""The API-budget governor: a signing daemon must not eat the org's daily API allocation.

Salesforce reports the org's usage on every REST response (`Sforce-Limit-Info: api-usage=used/max`),
shared by every integration of the org. Above a configurable share of the allocation (default 80 %)
sfsign keeps doing what a rep is waiting for (new signatures) and holds back what can wait: long-term
validation upgrades and archive-timestamp renewals are deferred, the audit trail is sent less often,
and batches wait longer so each call carries more records. Below the threshold again, everything
resumes by itself.
"""

from __future__ import annotations

from collections.abc import Callable


class ApiGovernor:
    def __init__(self, usage: Callable[[], tuple[int, int] | None], threshold: float = 0.8) -> None:
        self._usage = usage
        self.threshold = threshold

    def share(self) -> float | None:
        """Used share of the daily allocation, from the last response seen (None before any call)."""
        usage = self._usage()
        if usage is None or usage[1] <= 0:
            return None
        return usage[0] / usage[1]

    def constrained(self) -> bool:
        """True while non-urgent work should wait."""
        share = self.share()
        return share is not None and share >= self.threshold
