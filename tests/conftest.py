"""Fixtures for every test."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from secret_scan import find_secrets

_SECRET_HITS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Scan what each test phase printed and logged (see secret_scan.py)."""
    for section, content in report.sections:
        for what in find_secrets(content):
            _SECRET_HITS.append(f"{report.nodeid} [{section}]: {what}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SECRET_HITS:
        print("\nSECRET SCAN: secrets found in captured output:\n  " + "\n  ".join(sorted(set(_SECRET_HITS))))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
async def fail_on_loop_errors() -> AsyncIterator[None]:
    """Fail the test on 'Task exception was never retrieved' and other unhandled loop errors."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled errors in the event loop: {errors}"
