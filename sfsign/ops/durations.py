"""Durations as an operator reads them, in tables (`sfsign status`, `sfsign jobs`) and in the reason a
dead job gives on its record."""

from __future__ import annotations

import math


def human_age(seconds: float) -> str:
    """Compact age for a table: 45s, 3m12s, 5h04m, 2d03h."""
    s = max(0, math.floor(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
