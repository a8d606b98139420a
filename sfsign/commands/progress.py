"""`sfsign reconcile --since` with a progress line: a reconciliation of a large org pages through
thousands of records, and an operator at a terminal should see it move rather than wonder if it hangs.

The progress is counted from the query pages the reconciliation reads (each reports the query's total
size), so it runs exactly the daemon's `sfsign.reconcile.reconcile`; nothing is drawn when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from sfsign.config import Rules, Settings
from sfsign.salesforce.rest import QueryPage

ProgressFn = Callable[[int, int], None]  # (records read so far, records announced so far)


class PageCounter:
    """A reconciliation's page callback (`sfsign.reconcile.PageFn`): counts the records its query pages
    deliver, and the records their queries announce, and reports both to `progress`."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self.read = 0
        self.total = 0

    def __call__(self, page: QueryPage, first: bool) -> None:
        if first:  # a new query: its total joins the announced work
            self.total += page.total_size
        self.read += len(page.records)
        self._progress(self.read, self.total)


class ProgressLine:
    """One self-overwriting line on a terminal: `label [#####-----] 400/1,000 records`."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done:,}/{total:,} records")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


async def reconcile_with_progress(
    settings: Settings, rules: Rules, since: datetime | None, progress: ProgressFn | None
) -> int:
    """`sfsign.reconcile.reconcile_once`, with each query page reported to `progress`."""
    from sfsign.reconcile import reconcile_once

    return await reconcile_once(settings, rules, since, on_page=PageCounter(progress) if progress else None)
