"""What rendering and signing one contract costs on this machine.

Run: python benchmarks/bench_documents.py [--rounds 30] [--pool-docs 60]

Measures, with a generated demo PKI (nothing is written outside a temporary directory):
- first render in a fresh process (fonts parsed, compiler built) and warm renders,
- B-B signing with RSA-3072 (PKCS#12) and ECDSA P-256 (PEM), warm signer cache,
- render + sign per document, and offline validation,
- throughput of a forkserver process pool as the daemon would use it (one worker per core),
- the cost per PAdES level (B-B, B-T, B-T + upgrade to B-LT, B-T + upgrade to B-LTA) against the
  demo PKI's TSA/OCSP/CRL services on 127.0.0.1, printed as a markdown table
  (`--levels-only` runs just that part).
Numbers are medians (and p90) of wall-clock time; they vary with the machine, which is the point.

`bench_all.py` also uses the ceiling and CPU helpers below (render_job + sign_job in the daemon's pool
shape, and per-document CPU time measured inside a pool process).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sfsign.documents.jobs import SigningRequest, render_job, sign_job, warm_up
from sfsign.documents.ltv import upgrade_pdf
from sfsign.documents.model import ContractDocument, sample_contract
from sfsign.documents.render import POOL_START_METHOD, render_pdf
from sfsign.documents.sign import Appearance, KeySpec, SignatureLevel, SignedPdf, sign_pdf_bytes
from sfsign.documents.verify import validate_signed_pdf
from sfsign.localpki.pki import create_demo_pki
from sfsign.localpki.pkiserver import start_demo_pki_services

APPEARANCE = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg")


def _timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.9) - 1] * 1000


def _distinct_docs(count: int) -> list[ContractDocument]:
    """Different data per document: Typst memoises, so re-rendering one document would flatter it."""
    return [
        sample_contract(kind="quote", currency="EUR", line_count=30, transaction_id=f"sfs-bench-{i:016d}", variant=i)
        for i in range(count)
    ]


@dataclasses.dataclass
class CeilingResult:
    documents: int
    workers: int
    seconds: float

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds


@dataclasses.dataclass
class CpuResult:
    label: str
    pages: int
    render_ms: list[float]
    sign_ms: list[float]  # sign_job without validation: signature, and the RFC 3161 request at B-T
    validate_ms: list[float]  # what the worker adds for the record's validation verdict

    @property
    def render_sign_ms(self) -> list[float]:
        return sorted(r + s for r, s in zip(self.render_ms, self.sign_ms, strict=True))


def burst_documents(count: int) -> list[str]:
    """Documents shaped like the burst's: a proposal for an opportunity with 3 line items (one page)."""
    return [
        sample_contract(kind="proposal", currency="EUR", line_count=3, transaction_id=f"sfs-ceil-{i:016d}",
                        variant=i).model_dump_json()
        for i in range(count)
    ]


def two_page_documents(count: int) -> list[str]:
    """The 30-line quote: two pages, the document the CPU target is stated for."""
    return [
        sample_contract(kind="quote", currency="EUR", line_count=30, transaction_id=f"sfs-cpu-{i:016d}",
                        variant=i).model_dump_json()
        for i in range(count)
    ]


def cpu_job(document_json: str, template: str, request: SigningRequest) -> tuple[float, float, float, int]:
    """In a pool process: CPU seconds (time.process_time, so a TSA round trip is not counted) of
    render_job, of sign_job without validation, and of the validation, plus the page count."""
    start = time.process_time()
    pdf, boxes, _notes = render_job(document_json, template)
    rendered = time.process_time()
    signed = sign_job(pdf, boxes, dataclasses.replace(request, trust_roots=()))
    done = time.process_time()
    if request.trust_roots:
        validate_signed_pdf(signed.pdf, list(request.trust_roots))
    validated = time.process_time()
    return rendered - start, done - rendered, validated - done, len(re.findall(rb"/Type\s*/Page[^s]", pdf))


def _warm(request: SigningRequest, template: str) -> None:
    """What the daemon's pool processes do at start, plus the key, TSA session and validator caches."""
    warm_up()
    pdf, boxes, _notes = render_job(sample_contract(kind="proposal", line_count=3).model_dump_json(), template)
    sign_job(pdf, boxes, request)


def make_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(POOL_START_METHOD))


def warm_pool(pool: ProcessPoolExecutor, workers: int, request: SigningRequest, template: str) -> None:
    # Twice as many warm-ups as workers: a pool hands tasks to idle workers, so each gets at least one.
    list(pool.map(_warm, [request] * workers * 2, [template] * workers * 2))


async def _pipeline(pool: ProcessPoolExecutor, docs: list[str], template: str, request: SigningRequest,
                    in_flight: int) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(in_flight)

    async def one(document_json: str) -> None:
        async with gate:
            pdf, boxes, _notes = await loop.run_in_executor(pool, render_job, document_json, template)
            await loop.run_in_executor(pool, sign_job, pdf, boxes, request)

    await asyncio.gather(*(one(d) for d in docs))


def render_sign_ceiling(pool: ProcessPoolExecutor, workers: int, docs: list[str], template: str,
                        request: SigningRequest) -> CeilingResult:
    """Documents per second through render_job then sign_job in the pool, two hops per document as in
    the daemon, with no Salesforce I/O: the most the daemon's pool could deliver on this machine."""
    start = time.perf_counter()
    asyncio.run(_pipeline(pool, docs, template, request, in_flight=workers * 4))
    return CeilingResult(len(docs), workers, time.perf_counter() - start)


def cpu_per_document(pool: ProcessPoolExecutor, label: str, docs: list[str], template: str,
                     request: SigningRequest) -> CpuResult:
    """One document at a time, so the figures are CPU cost, not contention."""
    rows = [pool.submit(cpu_job, d, template, request).result() for d in docs]
    return CpuResult(label, max(r[3] for r in rows), [r[0] * 1000 for r in rows], [r[1] * 1000 for r in rows],
                     [r[2] * 1000 for r in rows])


def _render_and_sign(doc: ContractDocument, spec: KeySpec) -> SignedPdf:
    rendered = render_pdf(doc, "quote")
    return sign_pdf_bytes(rendered.pdf, rendered.signature_box, spec, APPEARANCE)


def _cold_render_ms() -> float:
    code = (
        "import time; t=time.perf_counter();"
        "from sfsign.documents.model import sample_contract;"
        "from sfsign.documents.render import render_pdf;"
        "t1=time.perf_counter(); render_pdf(sample_contract(), 'quote');"
        "print((time.perf_counter()-t1)*1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _level_costs(rounds: int) -> None:
    """Signing cost per PAdES level with RSA-3072, local TSA/OCSP/CRL over HTTP on 127.0.0.1.

    The upgrade rows are what the daemon pays later, asynchronously: sign B-T, then upgrade.
    Sessions (TSA, OCSP/CRL fetchers) are warm, as in a long-running worker process.
    """
    rendered = render_pdf(sample_contract(kind="quote", currency="EUR", line_count=30), "quote")
    with tempfile.TemporaryDirectory() as tmp:
        pki, services = start_demo_pki_services(Path(tmp) / "pki", passphrase="bench-only")
        try:
            spec, roots, tsa = pki.pkcs12_key_spec(), [pki.root_cert_pem_path], [services.tsa_url]

            def sign(level: SignatureLevel) -> SignedPdf:
                return sign_pdf_bytes(rendered.pdf, rendered.signature_box, spec, APPEARANCE, level=level, tsa_urls=tsa)

            def upgraded(target: SignatureLevel) -> int:
                return len(upgrade_pdf(sign(SignatureLevel.B_T).pdf, target, trust_roots=roots, tsa_urls=tsa).pdf)

            for level in SignatureLevel:  # warm every cache and session once
                upgraded(level) if level in (SignatureLevel.B_LT, SignatureLevel.B_LTA) else sign(level)
            before = dict(services.counts)
            rows = [
                ("B-B (sign)", *_timed(lambda: sign(SignatureLevel.B_B), rounds), len(sign(SignatureLevel.B_B).pdf)),
                ("B-T (sign)", *_timed(lambda: sign(SignatureLevel.B_T), rounds), len(sign(SignatureLevel.B_T).pdf)),
                (
                    "B-T + upgrade to B-LT",
                    *_timed(lambda: upgraded(SignatureLevel.B_LT), rounds),
                    upgraded(SignatureLevel.B_LT),
                ),
                (
                    "B-T + upgrade to B-LTA",
                    *_timed(lambda: upgraded(SignatureLevel.B_LTA), rounds),
                    upgraded(SignatureLevel.B_LTA),
                ),
            ]
            requests = {k: v - before.get(k, 0) for k, v in services.counts.items()}
        finally:
            services.stop()
    print(f"\nPAdES level cost, RSA-3072, {rounds} rounds, services on 127.0.0.1 (requests: {requests})\n")
    print("| level | median ms | p90 ms | size KiB |")
    print("|---|---:|---:|---:|")
    for name, median, p90, size in rows:
        print(f"| {name} | {median:.1f} | {p90:.1f} | {size / 1024:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description="render + sign cost per document")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pool-docs", type=int, default=60)
    parser.add_argument("--levels-only", action="store_true", help="only the per-level signing cost table")
    args = parser.parse_args()
    if args.levels_only:
        _level_costs(args.rounds)
        return 0

    doc = sample_contract(kind="quote", currency="EUR", line_count=30)
    with tempfile.TemporaryDirectory() as tmp:
        rsa = create_demo_pki(Path(tmp) / "rsa", passphrase="bench-only")
        ec = create_demo_pki(Path(tmp) / "ec", passphrase="bench-only", key_algorithm="ec-p256")
        rsa_spec, ec_spec = rsa.pkcs12_key_spec(), ec.pem_key_spec()

        rendered = render_pdf(doc, "quote")  # warm caches
        sign_pdf_bytes(rendered.pdf, rendered.signature_box, rsa_spec, APPEARANCE)
        sign_pdf_bytes(rendered.pdf, rendered.signature_box, ec_spec, APPEARANCE)
        signed = _render_and_sign(doc, rsa_spec)

        rows: list[tuple[str, float, float]] = []
        rows.append(("render, first in a fresh process", _cold_render_ms(), float("nan")))
        docs = iter(_distinct_docs(args.rounds * 2))
        rows.append(
            ("render 30-line quote (2 pages), warm", *_timed(lambda: render_pdf(next(docs), "quote"), args.rounds))
        )
        rows.append(
            ("render the same document again (memoised)", *_timed(lambda: render_pdf(doc, "quote"), args.rounds))
        )
        rows.append(
            (
                "sign B-B, RSA-3072 PKCS#12",
                *_timed(
                    lambda: sign_pdf_bytes(rendered.pdf, rendered.signature_box, rsa_spec, APPEARANCE), args.rounds
                ),
            )
        )
        rows.append(
            (
                "sign B-B, ECDSA P-256 PEM",
                *_timed(lambda: sign_pdf_bytes(rendered.pdf, rendered.signature_box, ec_spec, APPEARANCE), args.rounds),
            )
        )
        rows.append(
            ("render + sign (RSA), one document", *_timed(lambda: _render_and_sign(next(docs), rsa_spec), args.rounds))
        )
        rows.append(
            (
                "validate (offline, pyHanko)",
                *_timed(lambda: validate_signed_pdf(signed.pdf, [rsa.root_cert_pem_path]), args.rounds),
            )
        )

        workers = os.cpu_count() or 1
        context = multiprocessing.get_context(POOL_START_METHOD)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            list(pool.map(_render_and_sign, [doc] * workers, [rsa_spec] * workers))  # warm every worker
            start = time.perf_counter()
            batch = _distinct_docs(args.pool_docs)
            results = list(pool.map(_render_and_sign, batch, [rsa_spec] * args.pool_docs))
            elapsed = time.perf_counter() - start
        assert len(results) == args.pool_docs

    print(f"sfsign documents benchmark - {workers} cores, Python {sys.version.split()[0]}")
    print(f"{'operation':45} {'median ms':>10} {'p90 ms':>8}")
    for name, median, p90 in rows:
        print(f"{name:45} {median:10.1f} {p90:8.1f}")
    print(
        f"pool ({workers} forkserver workers): {args.pool_docs} documents in {elapsed:.2f} s "
        f"= {args.pool_docs / elapsed:.1f} documents/s"
    )
    print(f"sizes: rendered {len(rendered.pdf) / 1024:.0f} KiB, signed {len(signed.pdf) / 1024:.0f} KiB")
    _level_costs(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
