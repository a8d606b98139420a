"""Lone-document latency: stage change → `Signed` visible on the record, one record at a time.

Run: python benchmarks/bench_latency.py [--records 50] [--level B-T]
(`benchmarks/bench_all.py` runs it at B-B and B-T as part of the full report.)

The daemon is `sfsign run` in a subprocess (a black box, configured through SFSIGN_* variables); the
emulator runs on a thread of this process. Each opportunity is moved with one control call, and the
clock runs from that call's return to the first poll (every ~10 ms, through the control API, which
costs no API calls) that shows `Signed`: what a rep reloading the page would see. Only then is the
next record moved, so every document is a lone document. API calls are the emulator's per-org
counter (every REST call counts once; OAuth and CometD do not, as in Salesforce), read after the
daemon went quiet so that its audit-event flush is included.
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
    REP,
    STAGE_BB,
    STAGE_BT,
    Stack,
    api_calls_used,
    bench_stack,
    create_opportunities,
    percentile,
    running_daemon,
    settled_api_calls,
    step,
)

STAGES = {"B-B": STAGE_BB, "B-T": STAGE_BT}
POLL_S = 0.01


@dataclass
class LatencyResult:
    level: str
    ms: list[float]  # sorted
    api_calls: int
    errors: int
    steps: dict[str, tuple[int, float]] = field(default_factory=dict)  # the daemon's own: step → (n, mean ms)

    @property
    def count(self) -> int:
        return len(self.ms)

    def p(self, q: float) -> float:
        return percentile(self.ms, q)

    @property
    def calls_per_document(self) -> float:
        return self.api_calls / max(1, self.count)


async def _until_signed(stack: Stack, record_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await stack.control.get("Opportunity", record_id, ["Sign_Status__c"])).get("Sign_Status__c")
        if status in ("Signed", "Error"):
            return str(status)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{record_id} not signed within {timeout_s:.0f} s (status {status!r})")
        await asyncio.sleep(POLL_S)


async def measure_latency(stack: Stack, records: list[str], level: str) -> tuple[list[float], int]:
    """Move each record in turn; latency in ms per Signed record, and how many ended in Error."""
    stage, ms, errors = STAGES[level], [], 0
    for record_id in records:
        await stack.control.update("Opportunity", record_id, {"StageName": stage}, user=REP)
        start = time.perf_counter()
        if await _until_signed(stack, record_id, timeout_s=120) == "Signed":
            ms.append((time.perf_counter() - start) * 1000)
        else:
            errors += 1
    return sorted(ms), errors


async def run_latency(stack: Stack, count: int, levels: tuple[str, ...], *, warmup_s: float) -> list[LatencyResult]:
    """One daemon, `count` sequential stage changes per level, API calls counted per level."""
    with step(f"latency: creating {count * len(levels)} opportunities"):
        ids = await create_opportunities(stack.control, count * len(levels), "Latency")
    results = []
    async with running_daemon(stack, "latency", warmup_s=warmup_s) as daemon:
        for n, level in enumerate(levels):
            with step(f"latency: {count} sequential stage changes at {level}"):
                before = await api_calls_used(stack.control)
                steps_before = await asyncio.to_thread(daemon.step_ms)
                ms, errors = await measure_latency(stack, ids[n * count:(n + 1) * count], level)
                calls = await settled_api_calls(stack.control) - before
                daemon.check_alive()
                steps = _steps_between(steps_before, await asyncio.to_thread(daemon.step_ms))
            results.append(LatencyResult(level, ms, calls, errors, steps))
    return results


def _steps_between(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
                   ) -> dict[str, tuple[int, float]]:
    """Mean ms per step over the steps taken between two readings of the daemon's histogram."""
    out = {}
    for step_name, (n, mean) in after.items():
        n0, mean0 = before.get(step_name, (0, 0.0))
        if n > n0:
            out[step_name] = (n - n0, (n * mean - n0 * mean0) / (n - n0))
    return out


def steps_table(results: list[LatencyResult]) -> list[str]:
    """Where a lone document's time goes inside the daemon, by its own step histogram."""
    names = sorted({s for r in results for s in r.steps})
    lines = ["| level | " + " | ".join(f"{s} ms" for s in names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        lines.append(f"| {r.level} | " + " | ".join(f"{r.steps[s][1]:.1f}" if s in r.steps else "-"
                                                    for s in names) + " |")
    return lines


def latency_table(results: list[LatencyResult]) -> list[str]:
    lines = ["| level | documents | p50 ms | p95 ms | p99 ms | max ms | API calls / document | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.level} | {r.count} | {r.p(50):.0f} | {r.p(95):.0f} | {r.p(99):.0f} | "
                     f"{r.ms[-1] if r.ms else float('nan'):.0f} | {r.calls_per_document:.2f} | {r.errors} |")
    return lines


async def _main(records: int, levels: tuple[str, ...], warmup_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="sfsign-bench-") as tmp:
        async with bench_stack(Path(tmp)) as stack:
            results = await run_latency(stack, records, levels, warmup_s=warmup_s)
    print("\n".join([*latency_table(results), "", "Mean time per step inside the daemon:", "",
                     *steps_table(results)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=50, help="sequential stage changes per level")
    parser.add_argument("--level", choices=[*STAGES, "both"], default="both")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between subscription and first change")
    args = parser.parse_args()
    levels = tuple(STAGES) if args.level == "both" else (args.level,)
    asyncio.run(_main(args.records, levels, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
