"""Fixtures for every test."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest


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
