"""Every issue-7 benchmark in one run, on this machine, with a markdown report next to the targets.

Run: python benchmarks/bench_all.py [--quick] [--out benchmarks/last-run.md]

In order, against one embedded emulator (own thread) and the demo PKI services (TSA, OCSP, CRL on
127.0.0.1), all in this process tree:
1. render + sign CPU per document (time.process_time in a pool process, one document at a time),
2. the ceiling: render_job then sign_job of burst-shaped documents in a process pool as large as the
   daemon's, no I/O but the local TSA, documents per second,
3. latency: sequential stage changes → `Signed` on the record, at B-B and B-T, API calls per document,
4. bursts: 1,000 and 10,000 records moved in bulk transactions of 200: documents per second, API calls
   per document, peak memory of the daemon's process tree; throughput as a fraction of the ceiling.
The daemon is `sfsign run` in a subprocess (SFSIGN_CPU_WORKERS = cores, SFSIGN_LOG_LEVEL=WARNING,
SFSIGN_OPS_PORT=0), a fresh data directory per phase. `--quick` runs small sizes as a smoke check.
Progress goes to stderr; the report to stdout and to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _support import Stack, bench_stack, machine_details, step
from bench_burst import VISIBLE_POLL_MAX, BurstResult, burst_table, run_burst, visible_table
from bench_burst import cpu_table as burst_cpu_table
from bench_documents import (
    CeilingResult,
    CpuResult,
    burst_documents,
    cpu_per_document,
    make_pool,
    render_sign_ceiling,
    two_page_documents,
    warm_pool,
)
from bench_latency import LatencyResult, latency_table, run_latency, steps_table

from sfsign.documents.jobs import SigningRequest
from sfsign.documents.sign import Appearance, SignatureLevel

# Issue 7's targets (2 cores, emulator on the same machine)
TARGET_P50_MS = 200.0
TARGET_P99_MS = 500.0
TARGET_CEILING_SHARE = 0.75
TARGET_BURST_CALLS = 0.05
TARGET_LONE_CALLS = 3.0
TARGET_CPU_MS = 60.0
TARGET_RSS_MB = 200.0


@dataclass
class Sizes:
    latency: int
    bursts: list[int]
    ceiling_docs: int
    cpu_docs: int
    quick: bool = False


FULL = Sizes(latency=200, bursts=[1000, 10000], ceiling_docs=400, cpu_docs=30)
QUICK = Sizes(latency=20, bursts=[100], ceiling_docs=60, cpu_docs=10, quick=True)


@dataclass
class Results:
    cpu: list[CpuResult] = field(default_factory=list)
    ceiling: CeilingResult | None = None
    latency: list[LatencyResult] = field(default_factory=list)
    bursts: list[BurstResult] = field(default_factory=list)
    seconds: float = 0.0


def signing_request(stack: Stack, level: SignatureLevel) -> SigningRequest:
    """What the daemon's pool gets for the benchmark rules' profiles (same key, TSA, roots, stamp)."""
    return SigningRequest(
        key=stack.pki.pkcs12_key_spec(),
        appearance=Appearance(name="Northwind Cloud GmbH", reason="Offer approved and signed by Northwind Cloud GmbH",
                              location="Berlin, Germany"),
        level=level,
        tsa_urls=(stack.services.tsa_url,) if level is SignatureLevel.B_T else (),
        trust_roots=(stack.pki.root_cert_pem_path,),
    )


def documents_phase(stack: Stack, sizes: Sizes, results: Results) -> None:
    """CPU per document and the ceiling, in a pool of the daemon's size (runs in a worker thread)."""
    request = signing_request(stack, SignatureLevel.B_T)
    with make_pool(stack.cores) as pool:
        with step(f"documents: warming a pool of {stack.cores} processes"):
            warm_pool(pool, stack.cores, request, "proposal")
            warm_pool(pool, stack.cores, request, "quote")
        with step(f"documents: CPU per document, {sizes.cpu_docs} of each kind, B-T"):
            results.cpu.append(cpu_per_document(pool, "quote, 30 lines", two_page_documents(sizes.cpu_docs),
                                                "quote", request))
            results.cpu.append(cpu_per_document(pool, "proposal, 3 lines (burst-shaped)",
                                                burst_documents(sizes.cpu_docs), "proposal", request))
        with step(f"documents: ceiling, {sizes.ceiling_docs} burst-shaped documents, B-T"):
            results.ceiling = render_sign_ceiling(pool, stack.cores, burst_documents(sizes.ceiling_docs),
                                                  "proposal", request)


async def run_all(work: Path, sizes: Sizes, burst_level: str, warmup_s: float, phases: set[str]) -> Results:
    results = Results()
    start = time.monotonic()
    async with bench_stack(work) as stack:
        if "documents" in phases:
            await asyncio.to_thread(documents_phase, stack, sizes, results)
        if "latency" in phases:
            results.latency = await run_latency(stack, sizes.latency, ("B-B", "B-T"), warmup_s=warmup_s)
        if "burst" in phases:
            for size in sizes.bursts:
                results.bursts.append(await run_burst(stack, size, burst_level, warmup_s=warmup_s))
    results.seconds = time.monotonic() - start
    return results


# ------------------------------------------------------------------------------------------ report


def _verdict(value: float, target: float, *, at_most: bool, unit: str = "", digits: int = 0) -> str:
    if value != value:  # NaN: nothing measured
        return "not measured"
    ok = value <= target if at_most else value >= target
    if ok:
        return "met"
    gap = value - target if at_most else target - value
    share = gap / target * 100
    return f"**missed** by {gap:.{digits}f}{unit} ({share:.{1 if share < 1 else 0}f} %)"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.9) - 1)] if ordered else float("nan")


def target_rows(results: Results, sizes: Sizes) -> list[str]:
    rows = ["| target (issue 7) | figure | verdict |", "|---|---:|---|"]
    bt = next((r for r in results.latency if r.level == "B-T"), None)
    if bt is not None:
        rows.append(f"| lone document at B-T, stage change → Signed: p50 ≤ {TARGET_P50_MS:.0f} ms | {bt.p(50):.0f} ms "
                    f"| {_verdict(bt.p(50), TARGET_P50_MS, at_most=True, unit=' ms')} |")
        rows.append(f"| lone document at B-T: p99 ≤ {TARGET_P99_MS:.0f} ms | {bt.p(99):.0f} ms "
                    f"| {_verdict(bt.p(99), TARGET_P99_MS, at_most=True, unit=' ms')} |")
    for r in results.latency:
        rows.append(f"| lone document at {r.level}: ≤ {TARGET_LONE_CALLS:.0f} API calls per document "
                    f"| {r.calls_per_document:.3f} "
                    f"| {_verdict(r.calls_per_document, TARGET_LONE_CALLS, at_most=True, digits=3)} |")
    ceiling = results.ceiling.docs_per_s if results.ceiling else float("nan")
    for b in results.bursts:
        label = f"{b.size:,}-record burst"
        share = b.docs_per_s / ceiling
        rows.append(f"| {label}: throughput ≥ {TARGET_CEILING_SHARE:.0%} of the render + sign ceiling "
                    f"| {b.docs_per_s:.1f} / {ceiling:.1f} documents/s = {share:.1%} "
                    f"| {_verdict(share * 100, TARGET_CEILING_SHARE * 100, at_most=False, unit=' points', digits=1)} |")
        stated = "" if b.size == 1000 else " (target stated for 1,000)"
        rows.append(f"| {label}: ≤ {TARGET_BURST_CALLS} API calls per document{stated} | {b.calls_per_document:.3f} "
                    f"| {_verdict(b.calls_per_document, TARGET_BURST_CALLS, at_most=True, digits=3)} |")
        stated = "" if b.size == 10000 else " (target stated for 10,000)"
        mb, pss = b.peak_rss_kib * 1024 / 1e6, b.peak_pss_kib * 1024 / 1e6
        rows.append(f"| {label}: peak RSS ≤ {TARGET_RSS_MB:.0f} MB{stated}, sum over the daemon's process tree "
                    f"(PSS in brackets) | {mb:.0f} MB ({pss:.0f} MB) "
                    f"| {_verdict(mb, TARGET_RSS_MB, at_most=True, unit=' MB')}; by PSS: "
                    f"{_verdict(pss, TARGET_RSS_MB, at_most=True, unit=' MB')} |")
    two_page = next((c for c in results.cpu if c.pages == 2), None)
    if two_page is not None:
        cpu = _median(two_page.render_sign_ms)
        rows.append(f"| render + sign CPU per two-page document at B-T ≤ {TARGET_CPU_MS:.0f} ms (median) "
                    f"| {cpu:.1f} ms | {_verdict(cpu, TARGET_CPU_MS, at_most=True, unit=' ms', digits=1)} |")
    return rows


def cpu_table(results: list[CpuResult]) -> list[str]:
    lines = ["| document (B-T, RSA-3072) | pages | render median | sign median | render + sign median | "
             "render + sign p90 | validation (worker adds it) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in results:
        lines.append(f"| {c.label} | {c.pages} | {_median(c.render_ms):.1f} ms | {_median(c.sign_ms):.1f} ms | "
                     f"{_median(c.render_sign_ms):.1f} ms | {_p90(c.render_sign_ms):.1f} ms | "
                     f"{_median(c.validate_ms):.1f} ms |")
    return lines


def report(results: Results, sizes: Sizes, command: str, burst_level: str) -> str:
    machine = machine_details()
    out = [f"# sfsign benchmarks, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "",
           f"Command: `{command}` ({'quick smoke run' if sizes.quick else 'full run'}, "
           f"{results.seconds / 60:.1f} min). Emulator, PKI services and daemon on this machine, HTTPS over "
           "127.0.0.1; the daemon is `sfsign run` with SFSIGN_CPU_WORKERS = cores, SFSIGN_LOG_LEVEL=WARNING, "
           "otherwise default settings.", "", "| machine | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += ["", "## Against the targets", "", *target_rows(results, sizes)]
    if results.latency:
        out += ["", "## Lone document: stage change → Signed on the record", "",
                f"{sizes.latency} opportunities (3 line items) per level, moved one at a time, each after the previous "
                "one shows `Signed`; from the control call's return to the first poll (every 10 ms) showing "
                "`Signed`. API calls include the audit events flushed after the documents.", "",
                *latency_table(results.latency), "",
                "Mean time per step inside the daemon (its own `sfsign_step_duration_seconds`, read from /metrics "
                "before and after each level):", "", *steps_table(results.latency)]
    if results.bursts:
        out += ["", f"## Burst at {burst_level}", "",
                "Opportunities (3 line items) moved in bulk transactions of 200 records, back to back; from the "
                "first bulk call to the first poll (every 0.5 s; 2 s for 10,000) finding every record `Signed`. "
                "RSS is the sum of VmRSS over the daemon, its pool's workers and multiprocessing's resource tracker "
                "(sampled every 100 ms; shared pages count once per process), PSS the same tree with shared pages "
                "split (every 0.5 s).", "",
                *burst_table(results.bursts), "",
                f"What a rep watching the records sees in bursts up to {VISIBLE_POLL_MAX} records: seconds from "
                "the first bulk call until each record was first seen `Signed` (every record polled every 0.1 s "
                "through the control API):", "", *visible_table(results.bursts), "",
                "Where the two cores went, CPU time per document during the burst (the emulator runs in the "
                "benchmark's own process):", "", *burst_cpu_table(results.bursts)]
    if results.ceiling:
        c = results.ceiling
        out += ["", "## Ceiling: render + sign with no Salesforce I/O", "",
                f"{c.documents} burst-shaped documents (proposal, 3 line items) through render_job then sign_job "
                f"(B-T against the local TSA, validation included, as the worker does) in a forkserver pool of "
                f"{c.workers} processes, at most {c.workers * 4} in flight: **{c.docs_per_s:.1f} documents/s** "
                f"({c.seconds:.1f} s)."]
        for b in results.bursts:
            out.append(f"- {b.size:,}-record burst: {b.docs_per_s:.1f} documents/s = "
                       f"{b.docs_per_s / c.docs_per_s:.1%} of the ceiling.")
    if results.cpu:
        out += ["", "## CPU per document", "",
                "time.process_time in a warm pool process, one document at a time (a TSA round trip is waiting, "
                "not CPU). *sign* is sign_job without validation; the worker also validates each signed file "
                "for the record's verdict.", "", *cpu_table(results.cpu)]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check of the whole run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "last-run.md")
    parser.add_argument("--latency", type=int, help="sequential stage changes per level (default 200, quick 20)")
    parser.add_argument("--bursts", type=int, nargs="+", help="burst sizes (default 1000 10000, quick 100)")
    parser.add_argument("--ceiling-docs", type=int, help="documents through the ceiling pool (default 400, quick 60)")
    parser.add_argument("--burst-level", choices=["B-B", "B-T"], default="B-T")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between subscription and first change")
    parser.add_argument("--only", nargs="+", choices=["documents", "latency", "burst"],
                        default=["documents", "latency", "burst"])
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = dataclasses.replace(base, latency=args.latency or base.latency, bursts=args.bursts or base.bursts,
                                ceiling_docs=args.ceiling_docs or base.ceiling_docs)
    command = "python benchmarks/bench_all.py" + "".join(f" {a}" for a in sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="sfsign-bench-") as tmp:
        results = asyncio.run(run_all(Path(tmp), sizes, args.burst_level, args.warmup, set(args.only)))
    text = report(results, sizes, command, args.burst_level)
    print(text)
    args.out.write_text(text)
    print(f"[bench] report written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
