"""CometD vs Pub/Sub side by side (issue 15): intake throughput, lone latency, decoding cost, daemon memory.

Run: python benchmarks/bench_transports.py [--records 10000] [--lone 50] [--decode 5000] [--out FILE] [--quick]

One emulator (a thread of this process) serves both transports; the daemon is `sfsign run` in a subprocess,
once per transport, each with a fresh data directory, against the same records (moved back to Prospecting,
while no daemon runs, between the two). What is measured is **intake**: the daemon is kept from signing so
that the pool's render and sign CPU does not compete with the transport on the two cores. It runs with
SFSIGN_WORKERS=1 and, once subscribed and warmed up, every REST call under /services/data/ is held
HOLD_MS by an emulator latency fault: the one worker waits on its record read, nothing is rendered, and
intake (which calls no REST API for a stage change) runs alone. SFSIGN_PENDING_AFTER_S=3600 keeps the
waiting jobs from asking for `Pending` notes. The streams themselves (CometD `/cometd/…`, the Pub/Sub gRPC
server, OAuth) are not held.

Per transport:
1. lone changes: `--lone` records moved one at a time; the next only once the previous one's job is in the
   outbox, then `LONE_SPACING_S` of quiet. Latency is the job's `created_at` (the outbox commit) minus its
   `event_time_ms` (the CDC commitTimestamp, the emulator's commit of the stage change), same clock;
2. the burst: `--records` records moved in bulk transactions of 200 (`CHUNK`), back to back. Events per
   second are the burst's jobs over the span from the first to the last job's `created_at` (n - 1 intervals);
   also reported from the first bulk call. During the burst the daemon process (not its idle pool) is
   sampled every 100 ms for VmRSS and every 500 ms for Pss; VmHWM is read at the end. Every 200 ms the
   events the daemon holds (delivered to it, not yet committed to the outbox) are counted: records moved,
   minus what the emulator still queues for the daemon's subscription, minus the burst's jobs committed.
Then, in process, the decoding cost per event of the burst's own events (`transport_decoding`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import (
    CDC_CHANNEL,
    CHUNK,
    REP,
    STAGE_BB,
    DaemonProcess,
    Stack,
    bench_stack,
    cpu_seconds,
    create_opportunities,
    machine_details,
    note,
    percentile,
    pss_kib,
    running_daemon,
    status_kib,
    step,
)
from transport_decoding import DecodeComparison, decode_costs, decode_table

from sfsign.emulator.avro_schemas import EventSchemas

TRANSPORTS = ("cometd", "pubsub")
NAMES = {"cometd": "CometD", "pubsub": "Pub/Sub"}
HOLD_PREFIX = "/services/data/"
HOLD_MS = 10_000
HELD_ENV = {"SFSIGN_WORKERS": "1", "SFSIGN_PENDING_AFTER_S": "3600"}
LONE_SPACING_S = 0.2
STALL_S = 120.0
RESTING_STAGE = "Prospecting"


@dataclass
class Sizes:
    records: int
    lone: int
    decode: int


FULL = Sizes(records=10_000, lone=50, decode=5_000)
QUICK = Sizes(records=300, lone=10, decode=300)


@dataclass
class TransportResult:
    transport: str
    lone_ms: list[float] = field(default_factory=list)  # sorted
    records: int = 0
    queued: int = 0
    move_s: float = 0.0  # how long the bulk updates took
    first_to_last_s: float = 0.0  # first burst job created → last
    change_to_last_s: float = 0.0  # first bulk call → last burst job created
    held_max: int = 0  # events delivered to the daemon and not yet in the outbox, at most
    idle_rss_kib: int = 0
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    hwm_kib: int = 0
    daemon_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0  # this process: the emulator's encoding and serving, the sampling

    @property
    def events_per_s(self) -> float:
        return (self.queued - 1) / self.first_to_last_s if self.first_to_last_s > 0 else float("nan")

    @property
    def name(self) -> str:
        return NAMES[self.transport]


class Outbox:
    """The daemon's outbox, read-only from outside (SQLite in WAL mode allows a reader beside the writer)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.path = daemon.data_dir / "outbox.sqlite"
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        return self._conn

    def jobs_since(self, since: float) -> tuple[int, float, float]:
        """(jobs, first created_at, last created_at) of the jobs created at or after `since` (epoch s)."""
        row = self._db().execute("SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM jobs WHERE created_at >= ?",
                                 (since,)).fetchone()
        return int(row[0]), float(row[1] or 0.0), float(row[2] or 0.0)

    def job_of(self, record_id: str) -> tuple[float, int] | None:
        """(created_at, event_time_ms) of the record's job, once it is committed."""
        row = self._db().execute("SELECT created_at, event_time_ms FROM jobs WHERE record_id = ?",
                                 (record_id,)).fetchone()
        return None if row is None else (float(row[0]), int(row[1]))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class DaemonMemory:
    """Peaks of the daemon process's own VmRSS (every `interval_s`) and Pss (every 5th sample)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss_kib = self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daemon-memory", daemon=True)

    def _run(self) -> None:
        samples = 0
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, status_kib(self.pid, "VmRSS"))
            if samples % 5 == 0:
                self.peak_pss_kib = max(self.peak_pss_kib, pss_kib(self.pid))
            samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> DaemonMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _server_queued(stack: Stack, transport: str) -> int:
    """Events the emulator still holds for the daemon's subscription to the CDC channel (not yet delivered)."""
    if transport == "pubsub":
        return sum(int(s["queued"]) for s in await stack.control.pubsub_streams() if s["topic"] == CDC_CHANNEL)
    return sum(int(c["queued"]) for c in await stack.control.streaming_clients() if CDC_CHANNEL in c["subscriptions"])


async def _move(stack: Stack, ids: list[str], stage: str) -> float:
    """Bulk updates of 200 records, back to back; seconds they took."""
    start = time.perf_counter()
    for n in range(0, len(ids), CHUNK):
        await stack.control.bulk_update("Opportunity", ids[n:n + CHUNK], {"StageName": stage}, user=REP)
    return time.perf_counter() - start


async def measure_lone(stack: Stack, daemon: DaemonProcess, outbox: Outbox, ids: list[str]) -> list[float]:
    """Stage change → job queued, ms, one record at a time (sorted)."""
    ms = []
    for record_id in ids:
        await stack.control.update("Opportunity", record_id, {"StageName": STAGE_BB}, user=REP)
        deadline = time.monotonic() + 60
        while (job := await asyncio.to_thread(outbox.job_of, record_id)) is None:
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no job for {record_id} within 60 s; see {daemon.log_path}")
            await asyncio.sleep(0.005)
        created_at, event_ms = job
        ms.append(created_at * 1000 - event_ms)
        await asyncio.sleep(LONE_SPACING_S)
    return sorted(ms)


async def measure_burst(stack: Stack, daemon: DaemonProcess, outbox: Outbox, ids: list[str],
                        result: TransportResult) -> None:
    """Move `ids` in bulk and wait until each has its job; fills the burst fields of `result`."""
    n = len(ids)
    result.records = n
    result.idle_rss_kib = status_kib(daemon.pid, "VmRSS")
    cpu_before = (cpu_seconds(daemon.pid), time.process_time())
    with DaemonMemory(daemon.pid) as memory:
        start = time.time()
        result.move_s = await _move(stack, ids, STAGE_BB)
        queued, progress_at, next_note = 0, time.monotonic(), time.monotonic() + 15
        while queued < n:
            await asyncio.sleep(0.2)
            waiting = await _server_queued(stack, result.transport)
            now_queued = (await asyncio.to_thread(outbox.jobs_since, start))[0]
            result.held_max = max(result.held_max, n - waiting - now_queued)
            daemon.check_alive()
            if now_queued != queued:
                queued, progress_at = now_queued, time.monotonic()
            elif time.monotonic() - progress_at > STALL_S:
                raise RuntimeError(f"{result.name}: stuck at {queued} of {n} jobs; see {daemon.log_path}")
            if time.monotonic() >= next_note:
                note(f"{result.name}: {queued} of {n} queued, {queued / (time.time() - start):.0f}/s")
                next_note += 15
        result.hwm_kib = status_kib(daemon.pid, "VmHWM")
        result.daemon_cpu_s = cpu_seconds(daemon.pid) - cpu_before[0]
        result.bench_cpu_s = time.process_time() - cpu_before[1]
    result.peak_rss_kib, result.peak_pss_kib = memory.peak_rss_kib, memory.peak_pss_kib
    result.queued, first, last = await asyncio.to_thread(outbox.jobs_since, start)
    result.first_to_last_s, result.change_to_last_s = last - first, last - start


async def run_transport(stack: Stack, transport: str, burst_ids: list[str], lone_ids: list[str],
                        warmup_s: float) -> TransportResult:
    """One daemon on `transport`, signing held: lone changes, then the burst; the records moved back after."""
    result = TransportResult(transport)
    fault_id: str | None = None
    try:
        async with running_daemon(stack, transport, warmup_s=warmup_s, extra_env=HELD_ENV,
                                  transport=transport) as daemon:
            answer = await stack.control.post("/_control/faults/latency", {"prefix": HOLD_PREFIX, "ms": HOLD_MS})
            fault_id = str(answer["id"])
            outbox = Outbox(daemon)
            try:
                with step(f"{NAMES[transport]}: {len(lone_ids)} lone stage changes"):
                    result.lone_ms = await measure_lone(stack, daemon, outbox, lone_ids)
                with step(f"{NAMES[transport]}: {len(burst_ids)} records moved in bulk"):
                    await measure_burst(stack, daemon, outbox, burst_ids, result)
            finally:
                outbox.close()
            note(f"stopping the daemon (held REST calls end within {HOLD_MS / 1000:.0f} s)")
    finally:
        if fault_id is not None:
            await stack.control.remove_fault(fault_id)
    with step(f"{NAMES[transport]}: records back to {RESTING_STAGE} (no daemon running)"):
        await _move(stack, [*burst_ids, *lone_ids], RESTING_STAGE)
    return result


def burst_events(stack: Stack, limit: int) -> list[Any]:
    """The last `limit` stage changes of the burst, from the emulator's bus (its own events)."""
    updates = [e for e in stack.emulator.org.bus.retained(CDC_CHANNEL)
               if e.data.get("payload", {}).get("ChangeEventHeader", {}).get("changeType") == "UPDATE"
               and e.data["payload"].get("StageName") == STAGE_BB]
    return updates[-limit:]


def intake_table(results: list[TransportResult]) -> list[str]:
    lines = ["| transport | records | bulk updates took | first → last job queued | **events/s into the outbox** "
             "| first change → last job queued | events held by the daemon, at most | daemon CPU / event "
             "| emulator + bench CPU / event |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.queued:,} of {r.records:,} | {r.move_s:.1f} s | {r.first_to_last_s:.1f} s "
                     f"| **{r.events_per_s:,.0f}** | {r.change_to_last_s:.1f} s | {r.held_max:,} "
                     f"| {r.daemon_cpu_s * 1e6 / max(1, r.queued):,.0f} µs "
                     f"| {r.bench_cpu_s * 1e6 / max(1, r.queued):,.0f} µs |")
    return lines


def memory_table(results: list[TransportResult]) -> list[str]:
    lines = ["| transport | daemon VmRSS before the burst | peak VmRSS during it | peak Pss during it | VmHWM |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.idle_rss_kib / 1024:.0f} MiB | {r.peak_rss_kib / 1024:.0f} MiB "
                     f"| {r.peak_pss_kib / 1024:.0f} MiB | {r.hwm_kib / 1024:.0f} MiB |")
    return lines


def lone_table(results: list[TransportResult]) -> list[str]:
    lines = ["| transport | changes | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        ms = r.lone_ms
        lines.append(f"| {r.name} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 95):.1f} "
                     f"| {percentile(ms, 99):.1f} | {ms[-1] if ms else float('nan'):.1f} |")
    return lines


def report(command: str, details: dict[str, str], results: list[TransportResult], decoding: DecodeComparison,
           seconds: float) -> str:
    agree = f"{decoding.agree:,} of {decoding.cometd.events:,}"
    lines = [f"Command: `{command}` ({seconds / 60:.1f} min).", "", "| machine | |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in details.items()), "",
             "Burst, intake only (signing held; see the module docstring):", "", *intake_table(results), "",
             "Daemon process memory during the burst:", "", *memory_table(results), "",
             "Lone stage change → job queued (CDC commitTimestamp → outbox commit):", "", *lone_table(results), "",
             "Decoding cost per event, in process, batches of 100 (best of 5 passes):", "", *decode_table(decoding),
             "", f"Both decodings give the same event model (the replay id aside) for {agree} events."]
    lines += [f"- `{name}` differs in {count:,} events, e.g. CometD `{a}`, Pub/Sub `{b}`"
              for name, (count, a, b) in decoding.differ.items()]
    return "\n".join(lines) + "\n"


async def _main(sizes: Sizes, warmup_s: float, command: str) -> str:
    started = time.monotonic()
    details = machine_details()
    with tempfile.TemporaryDirectory(prefix="sfsign-bench-") as tmp:
        async with bench_stack(Path(tmp)) as stack:
            with step(f"creating {sizes.records + sizes.lone} opportunities with line items"):
                ids = await create_opportunities(stack.control, sizes.records + sizes.lone, "Transport")
            burst_ids, lone_ids = ids[:sizes.records], ids[sizes.records:]
            results = [await run_transport(stack, t, burst_ids, lone_ids, warmup_s) for t in TRANSPORTS]
            with step(f"decoding cost over {sizes.decode} of the burst's events"):
                org = stack.emulator.org
                decoding = decode_costs(burst_events(stack, sizes.decode), EventSchemas(org.store.schema, org.org_id),
                                        CDC_CHANNEL)
    details["load average at the end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return report(command, details, results, decoding, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, help=f"burst size (default {FULL.records})")
    parser.add_argument("--lone", type=int, help=f"lone stage changes per transport (default {FULL.lone})")
    parser.add_argument("--decode", type=int, help=f"events timed for the decoding cost (default {FULL.decode})")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run of a minute or two")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between subscription and the first change")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(args.records or base.records, args.lone or base.lone, args.decode or base.decode)
    command = "python benchmarks/bench_transports.py " + " ".join(sys.argv[1:])
    text = asyncio.run(_main(sizes, args.warmup, command.strip()))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
