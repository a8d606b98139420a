"""Burst: N opportunities moved to a signing stage at once, as a mass edit or a data loader run does.

Run: python benchmarks/bench_burst.py [--records 1000] [--level B-T]
(`benchmarks/bench_all.py` runs 1,000 and 10,000 and compares them with the render + sign ceiling.)

The records (3 line items and a primary contact each) are created before the daemon starts. The
daemon (`sfsign run` in a subprocess, fresh data directory) subscribes, warms up, and then the records
are moved in bulk transactions of 200, back to back: each transaction puts its 200 changes on the
CDC channel at once. Throughput runs from the first bulk call to the first poll (every 0.5 s, one
COUNT() query through the control API; every 2 s for 10,000) that finds every record `Signed`. The
daemon's process tree (daemon, the pool's workers and multiprocessing's resource tracker) is sampled
every 100 ms for the sum of VmRSS; VmHWM of the daemon process itself is read before it stops, and
the CPU time of each process is read before and after the burst.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _support import (
    CHUNK,
    REP,
    STAGE_BB,
    STAGE_BT,
    RssSampler,
    Stack,
    api_calls_used,
    bench_stack,
    cpu_seconds,
    create_opportunities,
    describe_pss,
    note,
    process_tree,
    running_daemon,
    settled_api_calls,
    status_kib,
    step,
)

STAGES = {"B-B": STAGE_BB, "B-T": STAGE_BT}
STALL_S = 180.0  # no record finished for this long: the daemon is stuck, stop measuring
VISIBLE_POLL_MAX = 500  # bursts up to this size are polled record by record every 0.1 s


@dataclass
class BurstResult:
    size: int
    level: str
    seconds: float  # first change → last record Signed
    move_seconds: float  # how long the bulk updates themselves took
    signed: int
    errors: int
    api_calls: int
    peak_rss_kib: int  # sum over the process tree, sampled
    peak_processes: int
    peak_pss_kib: int  # sum of Pss over the process tree, sampled every 0.5 s
    main_hwm_kib: int  # VmHWM of the daemon process
    main_idle_kib: int = 0  # VmRSS of the daemon process before the burst
    peak_pss_by_role: dict[str, list[int]] = field(default_factory=dict)  # at the tree's peak, KiB
    cpu_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # CPU seconds: daemon process, pool, bench + emulator
    # Small bursts only (≤ VISIBLE_POLL_MAX records): seconds from the first bulk call until each record was
    # first seen Signed, polled every 0.1 s from outside, as a rep's list view would show it.
    visible_s: list[float] = field(default_factory=list)

    def cpu_ms_per_document(self) -> tuple[float, float, float]:
        daemon, pool, bench = (c * 1000 / max(1, self.size) for c in self.cpu_s)
        return daemon, pool, bench

    @property
    def docs_per_s(self) -> float:
        return self.signed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def calls_per_document(self) -> float:
        return self.api_calls / max(1, self.signed)


async def _count(stack: Stack, prefix: str, statuses: tuple[str, ...]) -> int:
    """One COUNT() query (a scan in the emulator, which shares this machine: polled sparingly)."""
    listed = ", ".join(f"'{s}'" for s in statuses)
    result = await stack.control.post("/_control/query", {
        "q": f"SELECT COUNT() FROM Opportunity WHERE Name LIKE '{prefix} %' AND Sign_Status__c IN ({listed})"})
    return int(result["totalSize"])


async def _signed_ids(stack: Stack, prefix: str) -> set[str]:
    rows = await stack.control.query(
        f"SELECT Id FROM Opportunity WHERE Name LIKE '{prefix} %' AND Sign_Status__c = 'Signed'")
    return {r["Id"] for r in rows}


async def run_burst(stack: Stack, size: int, level: str = "B-T", *, warmup_s: float = 3.0,
                    transport: str = "pubsub") -> BurstResult:
    prefix = f"Burst{size}"
    with step(f"burst {size}: creating {size} opportunities with line items"):
        ids = await create_opportunities(stack.control, size, prefix)
    poll_s = min(2.0, max(0.5, size / 5000))  # 0.5 s up to 2,500 records, 2 s for 10,000
    per_record = size <= VISIBLE_POLL_MAX
    if per_record:
        poll_s = 0.1
    seen: dict[str, float] = {}
    async with running_daemon(stack, f"burst-{size}", warmup_s=warmup_s, transport=transport) as daemon:
        with step(f"burst {size}: moving {size} records in bulk transactions of {CHUNK} at {level}"):
            idle_kib = status_kib(daemon.pid, "VmRSS")  # warmed up, subscribed, nothing to do yet
            pool = [p for p in process_tree(daemon.pid) if p != daemon.pid]
            cpu_before = (cpu_seconds(daemon.pid), sum(cpu_seconds(p) for p in pool), time.process_time())
            with RssSampler(daemon.pid) as rss:
                before = await api_calls_used(stack.control)
                start = time.perf_counter()
                for n in range(0, size, CHUNK):
                    await stack.control.bulk_update("Opportunity", ids[n:n + CHUNK], {"StageName": STAGES[level]},
                                                    user=REP)
                moved = time.perf_counter() - start
                finished, progress_at, next_note = 0, time.monotonic(), time.monotonic() + 15
                while finished < size:
                    await asyncio.sleep(poll_s)
                    if per_record:
                        at = time.perf_counter() - start
                        for rid in await _signed_ids(stack, prefix):
                            seen.setdefault(rid, at)
                    now_finished = await _count(stack, prefix, ("Signed", "Error"))
                    daemon.check_alive()
                    if now_finished != finished:
                        finished, progress_at = now_finished, time.monotonic()
                    elif time.monotonic() - progress_at > STALL_S:
                        raise RuntimeError(f"burst {size}: stuck at {finished} finished for {STALL_S:.0f} s; "
                                           f"see {daemon.log_path}")
                    if time.monotonic() >= next_note:
                        elapsed = time.perf_counter() - start
                        note(f"{finished} finished after {elapsed:.0f} s ({finished / elapsed:.1f}/s, "
                             f"tree RSS peak {rss.peak_kib / 1024:.0f} MiB)")
                        next_note += 15
                seconds = time.perf_counter() - start
                hwm = status_kib(daemon.pid, "VmHWM")
                cpu = (cpu_seconds(daemon.pid) - cpu_before[0],
                       sum(cpu_seconds(p) for p in pool) - cpu_before[1], time.process_time() - cpu_before[2])
            errors = await _count(stack, prefix, ("Error",))
            signed = size - errors
            calls = await settled_api_calls(stack.control) - before
    return BurstResult(size, level, seconds, moved, signed, errors, calls, rss.peak_kib, rss.peak_processes,
                       rss.peak_pss_kib, hwm, idle_kib, rss.peak_pss_by_role, cpu, sorted(seen.values()))


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def visible_table(results: list[BurstResult]) -> list[str]:
    """What a rep watching the records sees in a small burst: when each record first showed Signed."""
    lines = ["| records | first Signed | p50 | p95 | last | API calls / document |", "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if not r.visible_s:
            continue
        v = r.visible_s
        lines.append(f"| {r.size:,} | {v[0]:.2f} s | {_quantile(v, 0.5):.2f} s | {_quantile(v, 0.95):.2f} s "
                     f"| {v[-1]:.2f} s "
                     f"| {r.calls_per_document:.3f} |")
    return lines


def cpu_table(results: list[BurstResult]) -> list[str]:
    """Where the two cores went during each burst, per document."""
    lines = ["| records | daemon process | pool processes (render + sign + validate) | bench + emulator | total |",
             "|---:|---:|---:|---:|---:|"]
    for r in results:
        daemon, pool, bench = r.cpu_ms_per_document()
        lines.append(f"| {r.size:,} | {daemon:.1f} ms | {pool:.1f} ms | {bench:.1f} ms | "
                     f"{daemon + pool + bench:.1f} ms |")
    return lines


def burst_table(results: list[BurstResult]) -> list[str]:
    lines = ["| records | level | bulk updates took | first change → last Signed | documents/s | API calls "
             "| API calls / document | peak RSS, process tree | peak PSS, process tree "
             "| daemon process: RSS before → VmHWM "
             "| errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.size:,} | {r.level} | {r.move_seconds:.1f} s | {r.seconds:.1f} s | {r.docs_per_s:.1f} | "
                     f"{r.api_calls:,} | {r.calls_per_document:.3f} | {r.peak_rss_kib / 1024:.0f} MiB "
                     f"({r.peak_processes} processes) | {r.peak_pss_kib / 1024:.0f} MiB "
                     f"| {r.main_idle_kib / 1024:.0f} → {r.main_hwm_kib / 1024:.0f} MiB | {r.errors} |")
    return lines


def pss_lines(results: list[BurstResult]) -> list[str]:
    """Each process's Pss at the sample where the tree's sum peaked, in MiB."""
    return [f"- {r.size:,} records: {describe_pss(r.peak_pss_by_role)}" for r in results]


async def _main(sizes: list[int], level: str, warmup_s: float, transport: str) -> None:
    with tempfile.TemporaryDirectory(prefix="sfsign-bench-") as tmp:
        async with bench_stack(Path(tmp)) as stack:
            results = [await run_burst(stack, size, level, warmup_s=warmup_s, transport=transport)
                       for size in sizes]
    print("\n".join([*burst_table(results), "", "Peak PSS by process:", "", *pss_lines(results), "",
                     "CPU per document:", "", *cpu_table(results), "",
                     "Records first seen Signed (polled every 0.1 s; bursts up to "
                     f"{VISIBLE_POLL_MAX} records):", "", *visible_table(results)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, nargs="+", default=[1000], help="burst sizes, one run each")
    parser.add_argument("--level", choices=list(STAGES), default="B-T")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between subscription and the burst")
    parser.add_argument("--transport", choices=["pubsub", "cometd"], default="pubsub", help="SFSIGN_TRANSPORT")
    args = parser.parse_args()
    asyncio.run(_main(args.records, args.level, args.warmup, args.transport))
    return 0


if __name__ == "__main__":
    sys.exit(main())
