"""What the benchmarks share: the stack they run against, the daemon as a black box, and measurements.

The daemon is always `sfsign run` in a subprocess configured through SFSIGN_* variables, as ops would
run it, so the figures hold for whatever the worker does inside (before and after micro-batching).
The emulator and the demo PKI services (TSA, OCSP, CRL) run on threads of the benchmark process, on
the same machine: their CPU competes with the daemon's, which is part of what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sfsign.commands.demo import demo_pki
from sfsign.commands.demo_rules import DEMO_RULES_TAIL, PASSPHRASE_ENV, demo_rules_text
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices

REP = "lena.hoffmann@northwind.example"
STAGE_BB = "Proposal/Price Quote"  # signed at B-B by the benchmark rules
STAGE_BT = "Negotiation/Review"  # signed at B-T (local TSA)
CDC_CHANNEL = "/data/OpportunityChangeEvent"
CHUNK = 200  # records per bulk transaction: a Salesforce bulk update / data loader batch

# The demo's profiles (one per PAdES level, the local TSA) with rules that stop at B-B and B-T: the
# benchmarks measure the request path, not the background B-LT/B-LTA upgrade.
BENCH_RULES = f"""\
rules:
  - name: bench-b-b
    object: Opportunity
    field: StageName
    values: ["{STAGE_BB}"]
    template: proposal
    profile: seal-b-b
    file_name: "Proposal {{number}} {{date}}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
      - Payment within 30 days of invoice date.
  - name: bench-b-t
    object: Opportunity
    field: StageName
    values: ["{STAGE_BT}"]
    template: proposal
    profile: seal-b-t
    file_name: "Offer {{number}} {{date}}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
      - Payment within 30 days of invoice date.
"""


def bench_rules_text(pki: DemoPki, tsa_url: str) -> str:
    text = demo_rules_text(pki, tsa_url)
    if not text.endswith(DEMO_RULES_TAIL):
        raise RuntimeError("sfsign.commands.demo changed its rules layout; adapt benchmarks/_support.bench_rules_text")
    return text[: -len(DEMO_RULES_TAIL)] + BENCH_RULES


# ----------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """Emulator, demo PKI with its services, the rules file, and a control client (one per run)."""

    work: Path
    emulator: EmulatorThread
    pki: DemoPki
    services: PkiServices
    rules_file: Path
    control: ControlClient
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))

    def daemon_env(self, data_dir: Path, transport: str = "pubsub") -> dict[str, str]:
        """The environment ops would give `sfsign run` (only SFSIGN_* variables, no .env file); `transport`
        is SFSIGN_TRANSPORT, the Pub/Sub API being the emulator's."""
        login = self.emulator.login
        # Tuning knobs may be passed through for experiments; everything else SFSIGN_* is set here.
        tuning = ("SFSIGN_WORKERS", "SFSIGN_BATCH_LINGER_S", "SFSIGN_BATCH_LINGER_BURST_S",
                  "SFSIGN_BATCH_LINGER_BURST_FIRST_S", "SFSIGN_API_LATENCY_SHARE")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SFSIGN_") or k == PASSPHRASE_ENV or k in tuning}
        env.update({
            "SFSIGN_LOGIN_URL": self.emulator.url, "SFSIGN_AUTH_FLOW": "jwt",
            "SFSIGN_CONSUMER_KEY": login.consumer_key, "SFSIGN_USERNAME": login.username,
            "SFSIGN_PRIVATE_KEY_FILE": str(login.private_key_file), "SFSIGN_CA_BUNDLE": str(self.emulator.ca_file),
            "SFSIGN_DATA_DIR": str(data_dir), "SFSIGN_RULES_FILE": str(self.rules_file),
            "SFSIGN_CPU_WORKERS": str(self.cores), "SFSIGN_LOG_LEVEL": "WARNING", "SFSIGN_LOG_FORMAT": "console",
            "SFSIGN_OPS_PORT": "0", "SFSIGN_TRANSPORT": transport, "SFSIGN_PUBSUB_URL": self.emulator.pubsub_target,
        })
        return env


@contextlib.asynccontextmanager
async def bench_stack(work: Path) -> AsyncIterator[Stack]:
    emulator = EmulatorThread(data_dir=work / "emulator")
    emulator.start()
    try:
        with demo_pki(work) as (pki, services):
            rules_file = work / "rules.yaml"
            rules_file.write_text(bench_rules_text(pki, services.tsa_url))
            async with ControlClient(emulator.url, emulator.control_token, emulator.ca_file) as control:
                yield Stack(work, emulator, pki, services, rules_file, control)
    finally:
        emulator.stop()


# ------------------------------------------------------------------------------------------ records


async def create_opportunities(control: ControlClient, count: int, prefix: str) -> list[str]:
    """`count` open opportunities with 3 line items and a primary contact, in bulk transactions.

    Created while no daemon runs: their CREATE events are on the channel before the daemon subscribes
    (from -1, new events only), so they cannot disturb a measurement.
    """
    q = control.query
    pricebook = (await q("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))[0]["Id"]
    entries = await q("SELECT Id, UnitPrice FROM PricebookEntry WHERE CurrencyIsoCode = 'EUR'")
    contact = (await q("SELECT Id, AccountId FROM Contact WHERE Account.BillingCountry = 'France' LIMIT 1"))[0]
    ids: list[str] = []
    for start in range(0, count, CHUNK):
        numbers = range(start, min(start + CHUNK, count))
        opps = await control.bulk_create("Opportunity", [
            {"Name": f"{prefix} {i:05d}", "AccountId": contact["AccountId"], "StageName": "Prospecting",
             "CloseDate": "2027-06-30", "CurrencyIsoCode": "EUR", "Pricebook2Id": pricebook} for i in numbers
        ], user=REP)
        children: list[dict[str, Any]] = []
        for i, opp in zip(numbers, opps, strict=True):
            for j in range(3):
                entry = entries[(i + j) % len(entries)]
                children.append({"OpportunityId": opp, "PricebookEntryId": entry["Id"], "Quantity": 1 + j,
                                 "UnitPrice": entry["UnitPrice"]})
        await control.bulk_create("OpportunityLineItem", children, user=REP)
        await control.bulk_create("OpportunityContactRole", [
            {"OpportunityId": opp, "ContactId": contact["Id"], "Role": "Decision Maker", "IsPrimary": True}
            for opp in opps
        ], user=REP)
        ids.extend(opps)
    return ids


async def api_calls_used(control: ControlClient) -> int:
    return int((await control.api_usage())["used"])


async def settled_api_calls(control: ControlClient, *, quiet_s: float = 7.0, cap_s: float = 40.0) -> int:
    """API calls used once the daemon has gone quiet: audit events are flushed every few seconds after
    the documents, and they belong to the documents' cost. Gives up waiting after `cap_s`."""
    deadline = time.monotonic() + cap_s
    used, since = await api_calls_used(control), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.5)
        now_used = await api_calls_used(control)
        if now_used != used:
            used, since = now_used, time.monotonic()
    return used


# -------------------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """`python -m sfsign.cli run` with a fresh data directory; its output goes to a log file."""

    def __init__(self, stack: Stack, name: str, extra_env: dict[str, str] | None = None,
                 transport: str = "pubsub") -> None:
        self.stack = stack
        self.extra_env = extra_env or {}
        self.transport = transport
        self.data_dir = stack.work / f"daemon-{name}"
        self.log_path = stack.work / f"daemon-{name}.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ops_port = _free_port()  # the daemon's /metrics: where its own step timings are read

    def step_ms(self) -> dict[str, tuple[int, float]]:
        """Per job step, from the daemon's own histogram: (steps, mean ms). Time spent inside the daemon,
        from the step's start to its state change committed (hand-offs, queues and the call included)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for line in text.splitlines():
            for name, into in (("sfsign_step_duration_seconds_sum", sums), ("sfsign_step_duration_seconds_count",
                                                                             counts)):
                if line.startswith(name + '{step="'):
                    label = line.split('"')[1]
                    into[label] = float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
        return {k: (int(counts[k]), sums[k] * 1000 / counts[k]) for k in sums if counts.get(k)}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, *, warmup_s: float) -> None:
        """Start, wait until a new streaming client of the emulator is subscribed to the channel, then
        give the process pool `warmup_s` to finish its warm-up renders, as a long-running daemon has."""
        before = await self._subscribers()
        self.proc = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + 90
        while not await self._subscribers() - before:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"sfsign run did not subscribe within 90 s; see {self.log_path}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup_s)
        self.check_alive()

    def _spawn(self) -> subprocess.Popen[bytes]:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._log = self.log_path.open("wb")
        # SFSIGN_BENCH_PROFILE=FILE: the daemon process runs under cProfile (its event loop and callbacks;
        # not the pool's processes nor executor threads) and writes FILE when it stops; for finding where
        # the daemon's CPU per document goes, never for the figures (cProfile slows it down).
        profile = os.environ.get("SFSIGN_BENCH_PROFILE")
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        env = self.stack.daemon_env(self.data_dir, self.transport)
        env["SFSIGN_OPS_PORT"] = str(self.ops_port)
        env.update(self.extra_env)
        return subprocess.Popen(
            [sys.executable, *prefix, "-m", "sfsign.cli", "run"], env=env,
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.stack.work,
        )

    async def _subscribers(self) -> set[str]:
        """The emulator's subscriptions to the CDC channel on this daemon's transport: Bayeux client ids, or
        the rpc ids of Pub/Sub `Subscribe` streams (one stream per channel)."""
        control = self.stack.control
        if self.transport == "pubsub":
            return {s["rpcId"] for s in await control.pubsub_streams() if s["topic"] == CDC_CHANNEL}
        return {c["clientId"] for c in await control.streaming_clients() if CDC_CHANNEL in c["subscriptions"]}

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sfsign run exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def running_daemon(stack: Stack, name: str, *, warmup_s: float, extra_env: dict[str, str] | None = None,
                         transport: str = "pubsub") -> AsyncIterator[DaemonProcess]:
    daemon = DaemonProcess(stack, name, extra_env, transport)
    try:
        await daemon.start(warmup_s=warmup_s)
        yield daemon
    finally:
        await asyncio.to_thread(daemon.stop)


# ------------------------------------------------------------------------------------------ memory


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the pool's workers, multiprocessing's resource tracker)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def status_kib(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 once it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def process_role(root: int, pid: int) -> str:
    """What a process of the daemon's tree is, from its command line (forkserver children share it)."""
    if pid == root:
        return "daemon"
    cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "forkserver" in cmdline and _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()[1:2] == [str(root)]:
        return "fork server"
    return "pool process"


def pss_by_role(root: int, each: dict[int, int]) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {}
    for pid, kib in each.items():
        roles.setdefault(process_role(root, pid), []).append(kib)
    return roles


def describe_pss(roles: dict[str, list[int]]) -> str:
    """`daemon 140, fork server 30, pool process 90 + 88, …` in MiB."""
    return ", ".join(f"{role} {' + '.join(f'{k / 1024:.0f}' for k in sorted(kibs, reverse=True))}"
                     for role, kibs in sorted(roles.items()))


class RssSampler:
    """Every `interval_s`, the sum of VmRSS over the process tree; keeps the peak and the process count.

    The RSS sum counts pages shared between the daemon and its pool processes (the interpreter and
    libraries, mapped from the same files) once per process: an upper bound. Every `pss_every`-th sample also
    sums Pss from smaps_rollup (shared pages split between their users), which is what the tree really
    holds and what a cgroup memory limit comes closer to; it is read less often because it costs more.
    """

    def __init__(self, pid: int, interval_s: float = 0.1, pss_every: int = 5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.peak_pss_kib = 0
        self.peak_pss_by_role: dict[str, list[int]] = {}  # at the peak: role → each process's Pss
        self.peak_kib = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            total = sum(status_kib(p, "VmRSS") for p in pids)
            if total > self.peak_kib:
                self.peak_kib, self.peak_processes = total, len(pids)
            if self.samples % self.pss_every == 0:
                each = {p: pss_kib(p) for p in pids}
                if sum(each.values()) > self.peak_pss_kib:
                    self.peak_pss_kib = sum(each.values())
                    self.peak_pss_by_role = pss_by_role(self.pid, each)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------ figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list: no interpolation, so p99 of
    200 samples is the second largest, an observed value."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), -(-len(values) * q // 100)))
    return values[int(rank) - 1]


def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path) as fh:
        return fh.read()
    return ""


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    return ""


def machine_details() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    os_name = next((line.split("=", 1)[1].strip('"') for line in _read("/etc/os-release").splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cores": f"{len(os.sched_getaffinity(0))} usable ({os.cpu_count()} online), {cpu}",
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "OS": f"{os_name}, {platform.machine()}",
        "Python": platform.python_version(),
        "commit": f"{commit or 'unknown'}{dirty}",
        "load average at start (1/5/15 min)": load,
    }


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Progress on stderr (the report goes to stdout and the --out file)."""
    start = time.monotonic()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    yield
    print(f"[bench] {name}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(f"[bench]   {message}", file=sys.stderr, flush=True)
