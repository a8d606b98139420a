"""Helpers shared by the end-to-end tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sfsign.commands.demo import local_relay
from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.pubsub_server import decode_replay_id, encode_replay_id
from sfsign.emulator.server import EmulatorThread
from sfsign.salesforce.events import ReplayId, replay_label
from sfsign.signing.lifecycle import Clock

REP = "lena.hoffmann@northwind.example"
T = TypeVar("T")

#: Runs a test once per event transport (the `transport` fixture of conftest.py).
both_transports = pytest.mark.parametrize("transport", ["cometd", "pubsub"])


def replay_shown(position: int, transport: str) -> str:
    """How the daemon labels the event at bus `position` delivered over `transport` (`replay_label`)."""
    return str(position) if transport == "cometd" else replay_label(encode_replay_id(position))


def replay_position(replay_id: ReplayId | str | None) -> int:
    """The emulator's bus position of a replay id of either transport (0 for none): CometD's integer, or the
    Pub/Sub bytes the emulator issues (its position, 8 bytes big-endian, then two zero bytes), also as the
    `0x…` label jobs, parked events and logs show them with."""
    if replay_id is None:
        return 0
    if isinstance(replay_id, int):
        return replay_id
    if isinstance(replay_id, str):
        return int(replay_id) if not replay_id.startswith("0x") else replay_position(bytes.fromhex(replay_id[2:]))
    position = decode_replay_id(replay_id)
    assert position is not None, replay_id
    return position


@contextlib.asynccontextmanager
async def run_daemon(settings: Settings, rules: Rules, *, clock: Clock | None = None) -> AsyncIterator[Daemon]:
    """The daemon, ready; when a rule has signers and no relay is set, with the demo's embedded relay (its
    mailbox is `<data dir>/mailbox`, `Mailbox(daemon.settings.data_dir / MAILBOX)`). `clock`: the envelope
    parts' "now" (a fake one the test moves), set before the daemon runs."""
    with contextlib.ExitStack() as relay:
        if any(r.signers is not None for r in rules.rules):
            settings, _ = relay.enter_context(local_relay(settings))
        async with _running(settings, rules, clock) as daemon:
            yield daemon


@contextlib.asynccontextmanager
async def _running(settings: Settings, rules: Rules, clock: Clock | None = None) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, rules)
    if clock is not None:
        daemon.clock = clock
    task = asyncio.create_task(daemon.run(), name="daemon")
    ready = asyncio.create_task(daemon.ready.wait())
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            raise AssertionError("daemon stopped before it was ready")
        assert ready in done, "daemon did not subscribe within 60 s"
        yield daemon
    finally:
        ready.cancel()
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


async def until(check: Callable[[], Awaitable[T | None]], within_s: float = 30.0) -> T:
    """`check`'s first truthy answer, polled (bounded: a missing one fails the test, it does not hang it)."""
    async with asyncio.timeout(within_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def wait_for_status(
    control: ControlClient, sobject: str, record_id: str, statuses: tuple[str, ...] = ("Signed", "Error"),
    within_s: float = 90.0,
) -> dict[str, Any]:
    fields = ["Sign_Status__c", "Sign_Transaction_Id__c", "Signed_Document_Id__c", "Signed_Document_Url__c",
              "Signed_At__c", "Sign_Error__c", "Sign_Document_Hash__c", "Sign_Level__c"]
    async with asyncio.timeout(within_s):
        while True:
            record = await control.get(sobject, record_id, fields)
            if record.get("Sign_Status__c") in statuses:
                return record
            await asyncio.sleep(0.1)


async def settled_jobs(daemon: Daemon, within_s: float = 30.0) -> list[Any]:
    """The daemon's jobs once none sits between "write-back committed in Salesforce" and "recorded as
    done" (the record shows Signed a moment before the job's own state says so)."""
    from sfsign.outbox import JobState

    async with asyncio.timeout(within_s):
        while True:
            jobs = await daemon.outbox.call(lambda s: s.jobs())
            if not any(j.state in (JobState.UPLOADED, JobState.LTV_UPLOADED) for j in jobs):
                return jobs
            await asyncio.sleep(0.05)


async def record_id(control: ControlClient, sobject: str, name: str) -> str:
    escaped = name.replace("'", "\\'")
    rows = await control.query(f"SELECT Id FROM {sobject} WHERE Name = '{escaped}'")
    assert len(rows) == 1, rows
    return str(rows[0]["Id"])


def pdfsig_required() -> bool:
    """pdfsig is mandatory in CI (it installs poppler-utils); elsewhere the check is skipped."""
    if shutil.which("pdfsig"):
        return True
    if os.environ.get("CI"):
        raise AssertionError("pdfsig is missing in CI: .ci/run must install poppler-utils")
    return False


def cli_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment ops would give `sfsign` to run like `settings` (SFSIGN_* variables)."""
    from sfsign.commands.demo_rules import PASSPHRASE_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_") or k == PASSPHRASE_ENV}
    env.update({
        "SFSIGN_LOGIN_URL": settings.login_url, "SFSIGN_CONSUMER_KEY": settings.consumer_key,
        "SFSIGN_USERNAME": settings.username, "SFSIGN_PRIVATE_KEY_FILE": str(settings.private_key_file),
        "SFSIGN_CA_BUNDLE": str(settings.ca_bundle), "SFSIGN_DATA_DIR": str(settings.data_dir),
        "SFSIGN_RULES_FILE": str(settings.rules_file), "SFSIGN_OPS_PORT": str(settings.ops_port),
        "SFSIGN_TRANSPORT": settings.transport, "SFSIGN_PUBSUB_URL": settings.pubsub_url, **overrides,
    })
    return env


def echo_output(result: subprocess.CompletedProcess[str]) -> None:
    """Put a subprocess's output into pytest's capture, where the suite-wide secret scan reads it."""
    sys.stdout.write(result.stdout or "")
    sys.stderr.write(result.stderr or "")


def run_cli(args: list[str], settings: Settings, *, timeout: float = 120,
            **overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m sfsign.cli ARGS` configured like `settings`, through the environment as ops would."""
    result = subprocess.run([sys.executable, "-m", "sfsign.cli", *args], env=cli_env(settings, **overrides),
                            capture_output=True, text=True, timeout=timeout, check=False)
    echo_output(result)
    return result


@contextlib.contextmanager
def running_emulator(tmp_path: Path, **knobs: Any) -> Iterator[EmulatorThread]:
    """The e2e emulator on its own thread (3 s long polls, 10 s client timeout unless `knobs` say otherwise),
    stopped afterwards; an error in its loop fails the test."""
    emu = EmulatorThread(**{"data_dir": tmp_path / "emulator", "long_poll_timeout_ms": 3000,
                            "client_timeout_s": 10.0, **knobs})
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
    assert not emu.loop_errors, f"errors in the emulator's loop: {emu.loop_errors}"
