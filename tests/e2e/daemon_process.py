"""`sfsign run` as a subprocess, for the tests that kill it (SIGKILL) and start it again on the same data
directory: its environment with a relay and the signing pages, start, readiness, and kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from e2e_support import cli_env

from sfsign.config import Settings
from sfsign.localmail.server import LocalMailServer

WAIT_S = 60.0


def run_env(settings: Settings, rules_file: Path, relay: LocalMailServer, port: int, tmp_path: Path,
            **overrides: str) -> dict[str, str]:
    """`sfsign run`'s environment: the rules with signers, the test's relay, the signing pages on `port`."""
    return cli_env(settings, SFSIGN_RULES_FILE=str(rules_file), SFSIGN_SMTP_URL=relay.url,
                   SFSIGN_MAIL_FROM="Northwind Contracts <contracts@northwind.example>",
                   SFSIGN_SIGNING_PORT=str(port), SFSIGN_SIGNING_URL=f"http://127.0.0.1:{port}",
                   SFSIGN_SECRETS_DIR=str(tmp_path / "no-secrets"), SFSIGN_CPU_WORKERS="1", **overrides)


async def start_run(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`sfsign run` in a session of its own (a kill reaches its process pool too), logging to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfsign.cli", "run", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def subscribed(proc: asyncio.subprocess.Process, log: Path, times: int = 1) -> None:
    """Until the log shows the `times`-th "ready: subscribed" (one per start, in a log shared by starts)."""
    async with asyncio.timeout(WAIT_S):
        while (text := await asyncio.to_thread(log.read_text)).count('"ready: subscribed"') < times:
            assert proc.returncode is None, text[-3000:]
            await asyncio.sleep(0.1)


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL to the process group, if it still runs."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
