"""The chaos harness: a real daemon process, the emulated org, a burst of triggers, and the one invariant.

Shared by the CI tests (`tests/chaos/test_chaos_*.py`, short scale) and the by-hand long run
(`benchmarks/chaos_long.py`). The daemon runs as `python -m sfsign.cli run` in its own process group,
so `kill -9` takes it down with its render/sign pool exactly like a crashed container; the emulator
runs on a thread of the driver's process so the driver can restart it with its state kept.

Every scenario ends with `ChaosOrg.verify`: each triggered record is `Signed`, exactly one
ContentVersion carries its transaction id (and is linked to the record), and no other file was
uploaded. Waits are bounded; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import chaos_diagnostics

from sfsign.commands.demo import daemon_settings
from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import load_rules
from sfsign.connections import auth_config
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki, create_demo_pki
from sfsign.outbox import FIRST_SUBSCRIBED_KEY
from sfsign.salesforce.auth import Authenticator
from sfsign.salesforce.rest import SalesforceRest

REP = "lena.hoffmann@northwind.example"
TRIGGER_STAGE = "Proposal/Price Quote"
START_STAGE = "Qualification"
API_VERSION = "68.0"
REST_PREFIX = f"/services/data/v{API_VERSION}/"
CONTENT_VERSION_PATH = f"{REST_PREFIX}sobjects/ContentVersion"
DEFAULT_RETENTION_S = 72 * 3600.0
# Accounts of the seed whose currency is EUR; their contacts become the primary contact role.
EUR_ACCOUNTS = ("Acme Industries SAS", "Brandt & Söhne Maschinenbau GmbH", "Initech Ltd", "Hanse Logistik AG")


class ChaosFailure(AssertionError):
    """The harness could not drive the scenario (daemon died at start, timeout...): not a verdict."""


# ------------------------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    """How hard a run pushes. SHORT fits CI (2 cores, whole suite < 3 min); LONG is issue 3's figures."""

    name: str
    records: int
    kill_cycles: int
    kill_window_s: tuple[float, float]  # a kill lands this long after the daemon is ready
    emulator_restarts: int
    rate_503: float
    rate_lock: float
    revoke_every_s: float
    drop_every_s: float
    lock_records: int  # records row-locked right after their trigger (fault mix)...
    lock_hold_s: float  # ...and released this long after
    burst_chunks: int  # the burst is spread over this many chunks...
    chunk_pause_s: tuple[float, float]  # ...with a random pause between chunks
    restart_gap_s: tuple[float, float]  # between two emulator restarts
    uncertain_uploads: int  # inserts applied whose answer is cut (abort_after)
    crash_after_upload_cycles: int  # kill -9 while an applied insert's answer is held
    settle_s: float  # bound on the wait for every record to be signed
    retry_for_h: float = 72.0  # the default: no job of a run may go dead


#: Pub/Sub keepalives: the emulator's every PUBSUB_KEEPALIVE_S (Salesforce: within 270 s), and the daemon
#: gives a silent subscription up after PUBSUB_WATCHDOG_S (production: 300 s), so a half-open spell is seconds.
PUBSUB_KEEPALIVE_S = 1.0
PUBSUB_WATCHDOG_S = 4.0

SHORT = Scale(
    name="short", records=30, kill_cycles=3, kill_window_s=(0.1, 1.5), emulator_restarts=2, rate_503=0.10,
    rate_lock=0.05, revoke_every_s=5.0, drop_every_s=3.0, lock_records=2, lock_hold_s=8.0, burst_chunks=4,
    chunk_pause_s=(0.2, 1.0), restart_gap_s=(0.3, 2.0), uncertain_uploads=3, crash_after_upload_cycles=1,
    settle_s=150.0,
)
LONG = Scale(
    name="long", records=200, kill_cycles=12, kill_window_s=(0.2, 4.0), emulator_restarts=5, rate_503=0.10,
    rate_lock=0.05, revoke_every_s=30.0, drop_every_s=20.0, lock_records=5, lock_hold_s=60.0, burst_chunks=20,
    chunk_pause_s=(4.0, 12.0), restart_gap_s=(5.0, 30.0), uncertain_uploads=20, crash_after_upload_cycles=5,
    settle_s=900.0,
)


def chaos_scale() -> Scale:
    """SHORT unless SFSIGN_CHAOS=long."""
    return LONG if os.environ.get("SFSIGN_CHAOS", "").strip().lower() == "long" else SHORT


# ----------------------------------------------------------------------------------------- results


@dataclass
class Verdict:
    """What the org looks like at the end of a run, against the invariant."""

    records: int
    signed: int
    files: int
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ChaosResult:
    scenario: str
    records: int
    kills: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    verdict: Verdict | None = None
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    diagnostics: str = ""  # filled when the invariant is broken (see chaos_diagnostics)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def assert_invariant(self) -> None:
        assert self.verdict is not None, "the scenario did not reach its verdict"
        assert self.verdict.ok, (f"{self.scenario}: invariant broken:\n" + "\n".join(self.verdict.problems)
                                 + f"\n\n{self.diagnostics}")

    def row(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "scenario": self.scenario,
            "records": self.records,
            "kills": self.kills,
            "faults injected": self.faults_injected,
            "lost": v.lost if v else "?",
            "duplicated": v.duplicated if v else "?",
            "wall time": f"{self.wall_s:.0f} s",
            "fault detail": ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())),
        }


# ------------------------------------------------------------------------------------------ daemon


class DaemonProcess:
    """`python -m sfsign.cli run` in its own session (process group), its output in a log file."""

    def __init__(self, env: dict[str, str], cwd: Path, log_file: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.expected_exit = False

    async def start(self) -> None:
        self._log = await asyncio.to_thread(open, self.log_file, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfsign.cli", "run",
            env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL, stdout=self._log,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the daemon was not started")
        return self.proc.pid

    def died(self) -> str | None:
        """A message if the daemon exited without being told to."""
        if self.proc is None or self.proc.returncode is None or self.expected_exit:
            return None
        return f"the daemon exited by itself with code {self.proc.returncode}; log tail:\n{self.log_tail()}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def kill(self) -> None:
        """SIGKILL to the whole process group: the daemon and its pool die at once, nothing flushed."""
        self.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        await self._reap(30.0)

    async def stop(self, within_s: float = 60.0) -> int | None:
        """SIGTERM (graceful); SIGKILL to the group if it is not gone within `within_s`."""
        self.expected_exit = True
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
        await self._reap(30.0)
        return self.proc.returncode

    async def _reap(self, within_s: float) -> None:
        assert self.proc is not None
        await asyncio.wait_for(self.proc.wait(), within_s)
        # Anything left in the group (a pool worker that outlived a graceful stop) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------- org


@dataclass
class PkiMaterial:
    pki: DemoPki
    passphrase: str


def make_pki(directory: Path) -> PkiMaterial:
    """A demo signing PKI for one session of runs (blocking; RSA key generation)."""
    passphrase = secrets.token_urlsafe(18)
    pki = create_demo_pki(directory, org_name="Northwind Cloud GmbH", passphrase=passphrase)
    return PkiMaterial(pki, passphrase)


class ChaosOrg:
    """The emulated org, its control client, the daemon's configuration, and helpers over them."""

    def __init__(self, emulator: EmulatorThread, control: ControlClient, work: Path, pki: PkiMaterial,
                 scale: Scale, transport: str = "pubsub") -> None:
        self.transport = transport
        self.emulator = emulator
        self.control = control
        self.work = work
        self.pki = pki
        self.scale = scale
        self.rules_file = work / "rules.yaml"
        self.rules_file.write_text(RULES_TEMPLATE.format(
            p12=pki.pki.signer_p12_path, root=pki.pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV))
        self.channels = load_rules(self.rules_file).channels()
        self.data_dir = work / "daemon"
        self.starts = 0
        self.daemons: list[DaemonProcess] = []
        self.baseline_files: set[str] = set()
        self._baseline_taken = False
        self.locked_at: dict[str, float] = {}  # row-locked records and when they were locked
        # Serialises control calls with emulator restarts: a call never meets a closed port.
        self.emulator_lock = asyncio.Lock()

    # -- the daemon

    def daemon_env(self, **extra: str) -> dict[str, str]:
        login = self.emulator.login
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_")}
        env.update({
            "SFSIGN_LOGIN_URL": self.emulator.url,
            "SFSIGN_AUTH_FLOW": "jwt",
            "SFSIGN_CONSUMER_KEY": login.consumer_key,
            "SFSIGN_USERNAME": login.username,
            "SFSIGN_PRIVATE_KEY_FILE": str(login.private_key_file),
            "SFSIGN_CA_BUNDLE": str(self.emulator.ca_file),
            "SFSIGN_DATA_DIR": str(self.data_dir),
            "SFSIGN_RULES_FILE": str(self.rules_file), "SFSIGN_OPS_PORT": "0",
            "SFSIGN_SECRETS_DIR": str(self.work / "no-secrets"),
            "SFSIGN_API_VERSION": API_VERSION,
            "SFSIGN_LOG_LEVEL": "INFO",
            "SFSIGN_LOG_FORMAT": "json",
            "SFSIGN_CPU_WORKERS": "2",
            "SFSIGN_WORKERS": "4",
            "SFSIGN_SHUTDOWN_GRACE_S": "10",
            "SFSIGN_RETRY_FOR_H": str(self.scale.retry_for_h),
            "SFSIGN_TRANSPORT": self.transport,
            "SFSIGN_PUBSUB_URL": self.emulator.pubsub_target,
            "SFSIGN_PUBSUB_KEEPALIVE_S": str(PUBSUB_WATCHDOG_S),
            PASSPHRASE_ENV: self.pki.passphrase,
        })
        env.update(extra)
        return env

    async def start_daemon(
        self, *, wait_ready: bool = True, ready_within_s: float = 90.0, env: dict[str, str] | None = None
    ) -> DaemonProcess:
        self.starts += 1
        known = await self._subscribed_clients() if wait_ready and self.transport == "cometd" else set()
        daemon = DaemonProcess(self.daemon_env(**(env or {})), self.work, self.work / f"daemon-{self.starts:02d}.log")
        self.daemons.append(daemon)
        await daemon.start()
        if wait_ready:
            await self.wait_ready(daemon, known, ready_within_s)
        return daemon

    async def subscription_log(self) -> list[dict[str, Any]]:
        """Every subscribe the emulator saw on the daemon's transport (Bayeux /meta/subscribe or Pub/Sub
        Subscribe), oldest first, each with `successful` and, when refused, `error`."""
        path = "/_control/pubsub/subscriptions" if self.transport == "pubsub" else "/_control/streaming/subscriptions"
        return list((await self.control_call("GET", path))["subscriptions"])

    async def _subscribed_clients(self) -> set[str]:
        """Bayeux clients that subscribed successfully to every channel the rules need."""
        log = (await self.control_call("GET", "/_control/streaming/subscriptions"))["subscriptions"]
        ok: dict[str, set[str]] = {}
        for entry in log:
            if entry.get("successful"):
                ok.setdefault(str(entry["clientId"]), set()).add(str(entry["channel"]))
        return {cid for cid, chans in ok.items() if set(self.channels) <= chans}

    async def wait_ready(self, daemon: DaemonProcess, known: set[str], within_s: float) -> None:
        """Until a new Bayeux client has subscribed to every channel, or on Pub/Sub until the daemon logs it is
        subscribed (the daemon's intake is live)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if (message := daemon.died()) is not None:
                raise ChaosFailure(message)
            if self.transport == "pubsub":
                if '"ready: subscribed"' in await asyncio.to_thread(daemon.log_tail, 10_000):
                    return
            elif await self._subscribed_clients() - known:
                return
            await asyncio.sleep(0.1)
        raise ChaosFailure(f"the daemon did not subscribe within {within_s:.0f} s:\n{daemon.log_tail()}")

    # -- records

    async def create_opportunities(self, count: int, tag: str = "Chaos") -> list[str]:
        """Renderable opportunities (line item + primary contact role), in an early stage."""
        q = self.control.query
        pricebook = (await q("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))[0]["Id"]
        entries = await q("SELECT Id, UnitPrice FROM PricebookEntry WHERE CurrencyIsoCode = 'EUR'")
        accounts = []
        for name in EUR_ACCOUNTS:
            escaped = name.replace("'", "\\'")
            account = (await q(f"SELECT Id FROM Account WHERE Name = '{escaped}'"))[0]["Id"]
            contact = (await q(f"SELECT Id FROM Contact WHERE AccountId = '{account}'"))[0]["Id"]
            accounts.append((account, contact))
        ids = []
        for i in range(count):
            account, contact = accounts[i % len(accounts)]
            entry = entries[i % len(entries)]
            opp = await self.control.create("Opportunity", {
                "Name": f"{tag} {i:03d}", "AccountId": account, "StageName": START_STAGE,
                "CloseDate": "2027-06-30", "CurrencyIsoCode": "EUR", "Pricebook2Id": pricebook,
            }, user=REP)
            await self.control.create("OpportunityLineItem", {
                "OpportunityId": opp, "PricebookEntryId": entry["Id"], "Quantity": 1 + i % 5,
                "UnitPrice": entry["UnitPrice"],
            }, user=REP)
            await self.control.create("OpportunityContactRole", {
                "OpportunityId": opp, "ContactId": contact, "Role": "Decision Maker", "IsPrimary": True,
            }, user=REP)
            ids.append(opp)
        if not self._baseline_taken:  # files that existed before the first records of the run
            self.baseline_files = {f["Id"] for f in await self.control.files()}
            self._baseline_taken = True
        return ids

    async def trigger(self, ids: list[str], lock: frozenset[str] = frozenset()) -> None:
        """A rep moves each record to the trigger stage (one CDC event each); the records in `lock` are
        row-locked right after their move, so sfsign's write-back meets the contention."""
        for rid in ids:
            async with self.emulator_lock:
                await self.control.update("Opportunity", rid, {"StageName": TRIGGER_STAGE}, user=REP)
                if rid in lock:
                    await self.control._json("POST", "/_control/faults/row-locks", {"recordIds": [rid]})
                    self.locked_at[rid] = time.monotonic()

    async def burst(self, ids: list[str], rng: random.Random, lock: frozenset[str] = frozenset()) -> None:
        """The trigger burst, spread over `burst_chunks` chunks with random pauses between them."""
        chunks = max(1, min(self.scale.burst_chunks, len(ids)))
        size = -(-len(ids) // chunks)
        for n in range(0, len(ids), size):
            if n:
                await asyncio.sleep(rng.uniform(*self.scale.chunk_pause_s))
            await self.trigger(ids[n : n + size], lock)

    async def statuses(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for n in range(0, len(ids), 100):
            id_list = ", ".join(f"'{i}'" for i in ids[n : n + 100])
            async with self.emulator_lock:
                found = await self.control.query(
                    "SELECT Id, Sign_Status__c, Sign_Transaction_Id__c, Signed_Document_Id__c, Sign_Error__c "
                    f"FROM Opportunity WHERE Id IN ({id_list})"
                )
            rows.update({str(r["Id"]): r for r in found})
        return rows

    async def wait_settled(self, ids: list[str], daemon: DaemonProcess | None, within_s: float | None = None,
                           statuses: tuple[str, ...] = ("Signed",)) -> int:
        """Until every record shows one of `statuses` (bounded); returns how many do at the end."""
        deadline = time.monotonic() + (within_s if within_s is not None else self.scale.settle_s)
        done = 0
        while True:
            if daemon is not None and (message := daemon.died()) is not None:
                raise ChaosFailure(message)
            rows = await self.statuses(ids)
            done = sum(1 for r in rows.values() if r.get("Sign_Status__c") in statuses)
            if done == len(ids) or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(0.25)

    # -- the invariant

    async def verify(self, ids: list[str]) -> Verdict:
        """Each record `Signed` with exactly one file carrying its transaction id; no other file."""
        rows = await self.statuses(ids)
        async with self.emulator_lock:
            files = [f for f in await self.control.files() if f["Id"] not in self.baseline_files]
        by_tx: dict[str | None, list[dict[str, Any]]] = {}
        for f in files:
            by_tx.setdefault(f.get("Sign_Transaction_Id__c"), []).append(f)
        problems: list[str] = []
        lost = signed = 0
        accounted: set[str] = set()
        for rid in ids:
            row = rows.get(rid, {})
            status, tx = row.get("Sign_Status__c"), row.get("Sign_Transaction_Id__c")
            mine = by_tx.get(tx, []) if tx else []
            if status == "Signed":
                signed += 1
            if status != "Signed" or not mine:
                lost += 1
                problems.append(f"{rid}: status {status!r}, transaction {tx!r}, {len(mine)} file(s), "
                                f"error {row.get('Sign_Error__c')!r}")
                continue
            accounted.add(mine[0]["Id"])
            if len(mine) > 1:
                problems.append(f"{rid}: {len(mine)} files carry transaction {tx}")
            cv = mine[0]
            if rid not in {link["LinkedEntityId"] for link in cv["links"]}:
                problems.append(f"{rid}: file {cv['Id']} of transaction {tx} is not linked to the record")
            if row.get("Signed_Document_Id__c") != cv["ContentDocumentId"]:
                problems.append(f"{rid}: Signed_Document_Id__c {row.get('Signed_Document_Id__c')} is not "
                                f"{cv['ContentDocumentId']}")
        extra = [f for f in files if f["Id"] not in accounted]
        for f in extra:
            linked = [link["LinkedEntityId"] for link in f["links"]]
            problems.append(f"extra file {f['Id']} (transaction {f.get('Sign_Transaction_Id__c')}, linked to "
                            f"{linked})")
        return Verdict(records=len(ids), signed=signed, files=len(files), lost=lost, duplicated=len(extra),
                       problems=problems)

    # -- the daemon's outbox, read while the daemon is down

    def outbox_rows(self) -> list[dict[str, Any]]:
        path = self.data_dir / "outbox.sqlite"
        if not path.exists():
            return []
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            conn.close()

    def meta_value(self, key: str, present: bool = False) -> Any:
        """A row of the outbox's meta table (`present=True`: whether it exists)."""
        path = self.data_dir / "outbox.sqlite"
        if not path.exists():
            return False if present else None
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # the table is not created yet
            row = None
        finally:
            conn.close()
        return (row is not None) if present else (row[0] if row else None)

    def outbox_problems(self, ids: list[str]) -> list[str]:
        """After a graceful stop: one `done` job per record, nothing else."""
        rows = self.outbox_rows()
        problems = [f"job {r['transaction_id']} of {r['record_id']} is {r['state']} ({r['last_error']})"
                    for r in rows if r["state"] != "done"]
        per_record = Counter(r["record_id"] for r in rows)
        problems += [f"{rid}: {n} jobs" for rid, n in per_record.items() if n != 1]
        problems += [f"{rid}: no job" for rid in ids if rid not in per_record]
        return problems

    async def diagnostics(self, ids: list[str]) -> str:
        """The evidence of a failed run (outbox, emulator's Bayeux side, daemon logs), saved beside the logs."""
        subscriptions = await self.subscription_log()
        clients = (await self.control_call("GET", "/_control/pubsub/streams" if self.transport == "pubsub"
                                           else "/_control/streaming/clients"))
        logs = sorted(self.work.glob("daemon-*.log"))
        report = "\n".join([
            "chaos diagnostics",
            *await asyncio.to_thread(chaos_diagnostics.outbox_report, self.data_dir / "outbox.sqlite", ids),
            *chaos_diagnostics.streaming_report(subscriptions, clients),
            *await asyncio.to_thread(chaos_diagnostics.log_report, logs),
        ])
        path = self.work / "chaos-diagnostics.txt"
        await asyncio.to_thread(path.write_text, report)
        return f"{report}\n(saved in {path})"

    # -- faults

    async def control_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Any control API call (the client's `_json`), never during an emulator restart."""
        async with self.emulator_lock:
            return await self.control._json(method, path, body)

    async def control_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.control_call("POST", path, body or {})

    async def fault_hits(self) -> Counter[str]:
        described = await self.control_call("GET", "/_control/faults")
        hits: Counter[str] = Counter()
        for fault in described["errors"]:
            if fault["mode"] == "respond":
                label = f"{fault['status']} {fault['error_code']}"
            else:
                label = f"{fault['mode']} {fault['method'] or ''} {fault['prefix'].rstrip('/').rsplit('/', 1)[-1]}"
            hits[label] += int(fault["hits"])
        return hits

    async def kill_leftovers(self) -> None:
        """However a run ended, no daemon process of ours outlives it."""
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.returncode is None:
                await daemon.kill()

    async def restart_emulator(self) -> None:
        async with self.emulator_lock:
            await asyncio.to_thread(self.emulator.restart)


@contextlib.asynccontextmanager
async def rest_client(
    org: ChaosOrg, http_timeout: tuple[float, float] = (10.0, 120.0)
) -> AsyncIterator[SalesforceRest]:
    """A REST client of our own (JWT, the daemon's connected app), to act and look as a second integration."""
    settings = daemon_settings(org.emulator, org.work, org.rules_file, api_version=API_VERSION)
    authenticator = Authenticator(auth_config(settings))
    client = SalesforceRest(authenticator, api_version=API_VERSION, timeout=http_timeout)
    try:
        yield client
    finally:
        await client.close()
        await authenticator.aclose()


@contextlib.asynccontextmanager
async def chaos_org(work: Path, pki: PkiMaterial, scale: Scale, transport: str = "pubsub") -> AsyncIterator[ChaosOrg]:
    """An emulator on its own thread and a `ChaosOrg` over it; the emulator's loop must end clean."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    emulator = EmulatorThread(data_dir=work / "emulator", long_poll_timeout_ms=5000, client_timeout_s=15.0,
                              pubsub_keepalive_s=PUBSUB_KEEPALIVE_S)
    await asyncio.to_thread(emulator.start)
    try:
        async with ControlClient(emulator.url, emulator.control_token, emulator.ca_file) as control:
            org = ChaosOrg(emulator, control, work, pki, scale, transport)
            try:
                yield org
            finally:
                await org.kill_leftovers()
    finally:
        await asyncio.to_thread(emulator.stop)
    if emulator.loop_errors:
        raise AssertionError(f"errors in the emulator's loop: {emulator.loop_errors}")


async def _finish(org: ChaosOrg, result: ChaosResult, ids: list[str], daemon: DaemonProcess | None,
                  started: float, settle_s: float | None = None) -> ChaosResult:
    """Wait (bounded) for the org to settle, stop the daemon gracefully, then judge."""
    await org.wait_settled(ids, daemon, settle_s)
    if daemon is not None:
        await daemon.stop()
    verdict = await org.verify(ids)
    verdict.problems += org.outbox_problems(ids)
    result.verdict = verdict
    result.wall_s = time.monotonic() - started
    if not verdict.ok:
        result.diagnostics = await org.diagnostics(ids)
    rows = await asyncio.to_thread(org.outbox_rows)
    result.notes["max attempts of a job"] = max((r["attempts"] for r in rows), default=0)
    result.notes["log: uploads found by transaction id"] = await asyncio.to_thread(
        _count_in_logs, org, "upload already happened; reusing it")
    result.notes["log: step retries"] = await asyncio.to_thread(_count_in_logs, org, "step failed; will retry")
    result.notes["log: gap reconciliations"] = await asyncio.to_thread(_count_in_logs, org, GAP_EVENT)
    return result


def _count_in_logs(org: ChaosOrg, event: str) -> int:
    count = 0
    for path in sorted(org.work.glob("daemon-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == event:
                    count += 1
    return count


async def _until(pred: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await pred():
        if time.monotonic() >= deadline:
            raise ChaosFailure(f"timed out after {within_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------ scenarios


async def scenario_kill(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """(a) kill -9 the daemon at random moments during the burst, restarting each time.

    The burst comes in `kill_cycles + 1` chunks; each kill lands a random moment after a chunk was
    triggered, so it meets jobs in every step. Some chunks are triggered while the daemon is down
    (they must come back through the replay), and some restarts are killed again during start-up.
    """
    scale = org.scale
    ids = await org.create_opportunities(scale.records)
    result = ChaosResult("a: kill -9 during burst", len(ids))
    size = -(-len(ids) // (scale.kill_cycles + 1))
    chunks = [ids[n : n + size] for n in range(0, len(ids), size)]
    started = time.monotonic()
    daemon = await org.start_daemon()
    in_flight: list[int] = []
    in_doubt = 0
    while_down = 0
    for cycle in range(scale.kill_cycles):
        chunk = chunks[cycle] if cycle < len(chunks) else []
        await org.trigger(chunk)
        await asyncio.sleep(rng.uniform(*scale.kill_window_s))
        await daemon.kill()
        result.kills += 1
        rows = org.outbox_rows()
        in_flight.append(sum(1 for r in rows if r["state"] not in ("done", "error", "dead")))
        in_doubt += sum(1 for r in rows if r["upload_uncertain"])
        if rng.random() < 0.3 and cycle + 1 < len(chunks):
            # Stay down a while and let records move meanwhile: they must come back through the replay.
            head = chunks[cycle + 1][: max(1, len(chunks[cycle + 1]) // 2)]
            await org.trigger(head)
            chunks[cycle + 1] = chunks[cycle + 1][len(head) :]
            while_down += len(head)
        # Sometimes the next kill lands during start-up (login, subscribe, resumed jobs).
        daemon = await org.start_daemon(wait_ready=rng.random() >= 0.25)
    for chunk in chunks[scale.kill_cycles :]:
        await org.trigger(chunk)
    result.faults["kill -9"] = result.kills
    result.notes["jobs in flight at each kill"] = in_flight
    result.notes["uploads in doubt at a kill"] = in_doubt
    result.notes["triggered while the daemon was down"] = while_down
    return await _finish(org, result, ids, daemon, started)


TORN_KINDS = ("truncated", "html", "html-502", "not-array")
# The daemon's log event when a channel had to resubscribe from -1 and its objects are reconciled.
GAP_EVENT = "resubscribed without a replay position: reconciling what the lost session may have held"


class FaultSchedule:
    """Periodic stream faults, driven from outside the emulator: revoke tokens, drop long polls, tear
    connect answers that carry events (one kind after the other), and forget every Bayeux client once.
    Counts what it did."""

    def __init__(self, org: ChaosOrg, rng: random.Random) -> None:
        self.org = org
        self.rng = rng
        self.done: Counter[str] = Counter()
        self._torn_armed = 0

    async def tear_next_connect(self) -> None:
        """Count the torn answer armed last if it fired, and arm the next kind."""
        torn = (await self.org.control_call("GET", "/_control/faults")).get("cometd_torn")
        if torn is not None and torn["hits"]:
            self.done["torn connect answer"] += 1
        if torn is None or torn["hits"]:
            kind = TORN_KINDS[self._torn_armed % len(TORN_KINDS)]
            self._torn_armed += 1
            await self.org.control_post("/_control/streaming/torn-connects", {"kind": kind, "count": 1})

    async def run(self, stop: asyncio.Event) -> None:
        if self.org.transport == "pubsub":
            await self._run_pubsub(stop)
            return
        scale = self.org.scale
        now = time.monotonic()
        next_revoke, next_drop = now + scale.revoke_every_s, now + scale.drop_every_s
        forget_at = now + 1.5 * scale.drop_every_s
        await self.tear_next_connect()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_revoke:
                mode = "http" if self.done["token revoked"] % 2 else "bayeux"
                await self.org.control_post("/_control/streaming/revoke-tokens", {"mode": mode})
                self.done["token revoked"] += 1
                next_revoke = now + scale.revoke_every_s
            if now >= next_drop:
                await self.org.control_post("/_control/streaming/drop-connections")
                self.done["stream dropped"] += 1
                next_drop = now + scale.drop_every_s
                await self.tear_next_connect()
            if forget_at and now >= forget_at:
                await self.org.control_post("/_control/streaming/forget-clients")
                self.done["403::Unknown client"] += 1
                forget_at = 0.0
            await self._release_row_locks(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


    async def _run_pubsub(self, stop: asyncio.Event) -> None:
        """The Pub/Sub faults: revoked tokens, Subscribe streams ended with UNAVAILABLE, and once a half-open
        spell (streams open, silent) long enough for the daemon's keepalive watchdog to give up on them."""
        scale = self.org.scale
        now = time.monotonic()
        next_revoke, next_drop = now + scale.revoke_every_s, now + scale.drop_every_s
        hold_at, release_at = now + 1.5 * scale.drop_every_s, 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_revoke:
                await self.org.control_post("/_control/auth/revoke")
                self.done["token revoked"] += 1
                next_revoke = now + scale.revoke_every_s
            if now >= next_drop and not release_at:
                await self.org.control_post("/_control/pubsub/drop-streams")
                self.done["stream dropped"] += 1
                next_drop = now + scale.drop_every_s
            if hold_at and now >= hold_at:
                await self.org.control_post("/_control/pubsub/hold-streams", {"enabled": True})
                hold_at, release_at = 0.0, now + PUBSUB_WATCHDOG_S + 1.0
            if release_at and now >= release_at:
                await self.org.control_post("/_control/pubsub/hold-streams", {"enabled": False})
                self.done["half-open streams"] += 1
                release_at = 0.0
            await self._release_row_locks(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        if release_at:
            await self.org.control_post("/_control/pubsub/hold-streams", {"enabled": False})

    async def _release_row_locks(self, now: float) -> None:
        """The records row-locked at their trigger are released after `lock_hold_s`."""
        due = [rid for rid, at in self.org.locked_at.items() if now >= at + self.org.scale.lock_hold_s]
        if due:
            await self.org.control_call("DELETE", "/_control/faults/row-locks", {"recordIds": due})
            for rid in due:
                del self.org.locked_at[rid]
            self.done["row lock held"] += len(due)


async def scenario_fault_mix(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """(b) the burst under 503s, row locks, revoked tokens, dropped and torn streams and one forgotten client."""
    scale = org.scale
    ids = await org.create_opportunities(scale.records)
    result = ChaosResult("b: fault mix", len(ids))
    await org.control_post("/_control/faults/errors", {
        "prefix": REST_PREFIX, "status": 503, "errorCode": "SERVER_UNAVAILABLE", "rate": scale.rate_503})
    await org.control_post("/_control/faults/errors", {
        "prefix": REST_PREFIX, "status": 400, "errorCode": "UNABLE_TO_LOCK_ROW", "rate": scale.rate_lock,
        "message": "unable to obtain exclusive access to this record"})
    locked = frozenset(rng.sample(ids, min(scale.lock_records, len(ids))))
    started = time.monotonic()
    # no periodic reconciliation: what the stream lost in a torn answer must come back by replay, or, before
    # the channel's first committed event (seed 2545358395 on a loaded machine: the first chunk), by the
    # reconciliation of the gap that the resubscription from -1 leaves
    daemon = await org.start_daemon(env={"SFSIGN_RECONCILE_INTERVAL_S": "0"})
    schedule = FaultSchedule(org, rng)
    stop = asyncio.Event()
    runner = asyncio.create_task(schedule.run(stop), name="fault-schedule")
    try:
        await org.burst(ids, rng, locked)
        await org.wait_settled(ids, daemon)
    finally:
        stop.set()
        await runner
    if org.transport == "cometd":
        await schedule.tear_next_connect()  # counts the last one if it fired
    result.faults.update(schedule.done)
    result.faults.update(await org.fault_hits())
    await org.control_call("DELETE", "/_control/faults")
    return await _finish(org, result, ids, daemon, started)


async def scenario_torn_before_first_commit(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """A fresh install's first connect answer that carries events is torn: no replay id is committed yet, so
    the new session subscribes from -1 and the torn events (and any published before it) never come back
    on the stream. No periodic reconciliation: the gap's own reconciliation must find them."""
    ids = await org.create_opportunities(max(3, org.scale.records // 10))
    result = ChaosResult("torn before the first commit", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon(env={"SFSIGN_RECONCILE_INTERVAL_S": "0"})
    await org.control_post("/_control/streaming/torn-connects", {"kind": rng.choice(TORN_KINDS), "count": 1})
    await org.trigger(ids)

    async def torn() -> bool:
        fault = (await org.control_call("GET", "/_control/faults")).get("cometd_torn")
        return fault is not None and fault["hits"] > 0

    await _until(torn, 30.0, "the first answer carrying events to be torn")
    result.faults["torn connect answer"] = 1
    return await _finish(org, result, ids, daemon, started, settle_s=60.0)


async def scenario_retention(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """(c) the daemon is down longer than the retention window while records move: its stored replay id
    is invalid on restart, and reconciliation must sign every record it missed."""
    scale = org.scale
    ids = await org.create_opportunities(scale.records)
    first, missed = ids[: len(ids) // 3], ids[len(ids) // 3 :]
    result = ChaosResult("c: down past retention", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    await org.trigger(first)
    if await org.wait_settled(first, daemon) != len(first):
        raise ChaosFailure("the first third was not signed before the outage")
    await daemon.kill()
    result.kills += 1
    await org.control_post("/_control/streaming/retention", {"seconds": 1})
    await org.trigger(missed)

    async def purged() -> bool:
        got = await org.control_call("GET", "/_control/streaming/events?channel=/data/OpportunityChangeEvent")
        return not got["events"]

    await _until(purged, 30.0, "the outage's events to leave the retention window")
    await org.control_post("/_control/streaming/retention", {"seconds": DEFAULT_RETENTION_S})
    result.faults["retention expired"] = 1
    daemon = await org.start_daemon()
    await _finish(org, result, ids, daemon, started)
    sources = Counter(r["source"] for r in org.outbox_rows() if r["record_id"] in set(missed))
    result.notes["jobs of missed records by source"] = dict(sources)
    # CometD: 400 on the replayId; Pub/Sub: INVALID_ARGUMENT [...subscription.fetch.replayid.corrupted]
    result.notes["invalid replay id refused"] = any(
        not e.get("successful") and "replayid" in str(e.get("error")).lower() for e in await org.subscription_log())
    return result


async def scenario_emulator_restart(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """(d) Salesforce goes away and comes back (state kept) at random moments during the burst."""
    scale = org.scale
    ids = await org.create_opportunities(scale.records)
    result = ChaosResult("d: emulator restarted", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    burst = asyncio.create_task(org.burst(ids, rng), name="burst")
    try:
        for _ in range(scale.emulator_restarts):
            await asyncio.sleep(rng.uniform(*scale.restart_gap_s))
            await org.restart_emulator()
            result.faults["emulator restart"] += 1
        await burst
    finally:
        if not burst.done():
            burst.cancel()
            await asyncio.gather(burst, return_exceptions=True)
    return await _finish(org, result, ids, daemon, started)


async def scenario_uncertain_upload(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """The ContentVersion insert is applied, then the connection is cut before the answer: the worker must
    find the file by transaction id instead of uploading again."""
    cut = org.scale.uncertain_uploads
    ids = await org.create_opportunities(cut + max(2, cut // 2))
    result = ChaosResult("uncertain upload (cut after insert)", len(ids))
    await org.control_post("/_control/faults/errors", {
        "prefix": CONTENT_VERSION_PATH, "method": "POST", "mode": "abort_after", "count": cut})
    started = time.monotonic()
    daemon = await org.start_daemon()
    # One at a time, so each goes through the single-file insert the fault targets (a burst's files
    # share one sObject Collections request: see scenario_uncertain_batch_upload).
    for rid in ids[:cut]:
        await org.trigger([rid])
        await org.wait_settled([rid], daemon)
    await org.burst(ids[cut:], rng)
    await org.wait_settled(ids, daemon)
    result.faults.update(await org.fault_hits())
    return await _finish(org, result, ids, daemon, started)


async def scenario_uncertain_batch_upload(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """A burst's files go up in one sObject Collections request; it is applied and the answer is lost.
    Every file of the batch is then in doubt: each job must find its file, none may be uploaded twice."""
    ids = await org.create_opportunities(max(4, org.scale.uncertain_uploads + 1))
    result = ChaosResult("uncertain batch upload (cut after insert)", len(ids))
    await org.control_post("/_control/faults/errors", {
        "prefix": f"{REST_PREFIX}composite/sobjects", "method": "POST", "mode": "abort_after", "count": 1})
    started = time.monotonic()
    # The records move together and uploads wait (up to 5 s) for the whole burst: otherwise each file
    # may be signed and uploaded alone, through the single-record call, and the cut never happens.
    daemon = await org.start_daemon(env={"SFSIGN_BATCH_LINGER_S": "5"})
    await org.trigger(ids)
    await org.wait_settled(ids, daemon)
    result.faults.update(await org.fault_hits())
    return await _finish(org, result, ids, daemon, started)


async def scenario_crash_after_upload(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """The insert is applied but its answer is held; the daemon is killed before it can record the upload.
    On restart the job is in `signed` with the upload in doubt: it must find the file, not upload again."""
    cycles = org.scale.crash_after_upload_cycles
    ids = await org.create_opportunities(cycles + 1)
    result = ChaosResult("kill -9 between insert and answer", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    in_doubt: list[str] = []
    for rid in ids[:cycles]:
        before = {f["Id"] for f in await org.control.files()}
        await org.control_post("/_control/faults/errors", {
            "prefix": CONTENT_VERSION_PATH, "method": "POST", "mode": "hold_after", "count": 1})
        await org.trigger([rid])

        async def uploaded(before: set[str] = before) -> bool:
            async with org.emulator_lock:
                files = await org.control.files()
            return any(f["Id"] not in before for f in files)

        await _until(uploaded, 60.0, "the held upload to reach the emulator")
        await daemon.kill()
        result.kills += 1
        in_doubt += [r["state"] for r in org.outbox_rows() if r["upload_uncertain"]]
        result.faults.update(await org.fault_hits())
        await org.control_call("DELETE", "/_control/faults")
        daemon = await org.start_daemon()
    await org.trigger(ids[cycles:])
    result.notes["jobs with the upload in doubt at the kills"] = in_doubt
    return await _finish(org, result, ids, daemon, started)


async def scenario_blind_restart(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """Records move while the daemon is down, before it ever stored a position on their channel (it was
    killed before the first event of that channel was committed): the restart subscribes from -1."""
    ids = await org.create_opportunities(max(3, org.scale.records // 10))
    result = ChaosResult("down before the first stored replay id", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    # Once the daemon has recorded that it listened (it did subscribe), the kill means "down", not "never ran".
    await _until(lambda: asyncio.to_thread(org.meta_value, FIRST_SUBSCRIBED_KEY, present=True), 30.0,
                 "the daemon to record its first subscription")
    await daemon.kill()
    result.kills += 1
    await org.trigger(ids)
    daemon = await org.start_daemon()
    # A probe moved after the restart proves intake works; the records moved before it are the question.
    probe = await org.create_opportunities(1, tag="Probe")
    await org.trigger(probe)
    await org.wait_settled(probe, daemon)
    return await _finish(org, result, ids + probe, daemon, started, settle_s=15.0)


async def scenario_reconcile_before_subscribe(org: ChaosOrg, rng: random.Random) -> ChaosResult:
    """A restart without a stored position reconciles; a record that moves after that reconciliation's
    query but before the new subscription is live must not fall between the two (a slow handshake)."""
    ids = await org.create_opportunities(2)
    result = ChaosResult("moved between reconcile and subscribe", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    await _until(lambda: asyncio.to_thread(org.meta_value, FIRST_SUBSCRIBED_KEY, present=True), 30.0,
                 "the daemon to record its first subscription")
    await daemon.kill()
    result.kills += 1
    await org.trigger(ids[:1])  # moved while down: the reconciliation finds it
    # the handshake on CometD; on Pub/Sub each Subscribe, before the server reads where it starts (LATEST)
    slow = "/eventbus.v1.PubSub/Subscribe" if org.transport == "pubsub" else "/cometd/"
    await org.control_post("/_control/faults/latency", {"prefix": slow, "ms": 3000})
    result.faults["slow handshake"] = 1
    # A watchdog (4 s here) shorter than the slowed Subscribe plus a keepalive would resubscribe and reconcile
    # the gap, hiding the window: production's is 300 s, so the window must close without it.
    daemon = await org.start_daemon(wait_ready=False, env={"SFSIGN_PUBSUB_KEEPALIVE_S": "60"})
    await _until(lambda: asyncio.to_thread(_log_has, daemon.log_file, "reconciliation done"), 60.0,
                 "the start-up reconciliation")
    await org.trigger(ids[1:])  # after the reconciliation's query, before the subscription
    await org.control_call("DELETE", "/_control/faults")
    return await _finish(org, result, ids, daemon, started, settle_s=20.0)


def _log_has(path: Path, event: str) -> bool:
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == event:
                    return True
    return False


SCENARIOS: dict[str, Callable[[ChaosOrg, random.Random], Awaitable[ChaosResult]]] = {
    "kill": scenario_kill,
    "fault-mix": scenario_fault_mix,
    "torn-before-first-commit": scenario_torn_before_first_commit,
    "retention": scenario_retention,
    "emulator-restart": scenario_emulator_restart,
    "uncertain-upload": scenario_uncertain_upload,
    "crash-after-upload": scenario_crash_after_upload,
    "blind-restart": scenario_blind_restart,
    "reconcile-before-subscribe": scenario_reconcile_before_subscribe,
}
