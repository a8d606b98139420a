"""The findings of `sfsign check` and how they are shown: a table for the person at the terminal, JSON
for scripts, and the failures alone for `run`, which refuses to start on them with `check`'s own words.

Kept apart from the checks themselves: both kinds of check (`local.py`, `org.py`) build findings the
same way, and what a finding is and how it reads is in one place for `check`, `run` and a reload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sfsign.config import ConfigError


@dataclass
class Check:
    """One line of `sfsign check`: what was checked, the verdict, what was found and, on failure, the fix."""

    name: str
    ok: bool | None  # None: not run (an earlier check failed, or not configured)
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    """A passed check."""
    return Check(name, True, detail)


def fail(name: str, detail: str, fix: str) -> Check:
    """A failed check; `fix` says what to do, in the words the table prints after "fix:"."""
    return Check(name, False, detail, fix)


class StartupRefused(ConfigError):
    """`run` found what `check` reports as failed: the daemon does not start (exit code 3). A configuration
    error like any other, with `check`'s words."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        super().__init__(render_failures(checks))


def refuse_on_failures(checks: list[Check]) -> None:
    failed = [c for c in checks if c.ok is False]
    if failed:
        raise StartupRefused(failed)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


def render_failures(checks: list[Check]) -> str:
    """The failed checks as `check` prints them (same words), for `run` refusing to start."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        if c.ok is False:
            lines.append(f"FAIL  {c.name.ljust(width)}  {c.detail}")
            if c.fix:
                lines.append(f"      {''.ljust(width)}  fix: {c.fix}")
    return "\n".join(lines)


def render_table(checks: list[Check]) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "skip"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{mark[c.ok]}  {c.name.ljust(width)}  {c.detail}")
        if c.ok is False and c.fix:
            lines.append(f"      {''.ljust(width)}  fix: {c.fix}")
    failed = sum(1 for c in checks if c.ok is False)
    lines.append("")
    lines.append("ready: every check passed" if not failed else f"not ready: {failed} check(s) failed")
    return "\n".join(lines)
