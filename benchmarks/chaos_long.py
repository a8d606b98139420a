"""The long chaos run of issue 3, by hand: every scenario at full scale, then a table of the figures.

Run: python benchmarks/chaos_long.py [--scale long|short] [--only kill,fault-mix,...] [--seed N]
                                     [--transport pubsub|cometd] [--work-dir DIR] [--json FILE]

Each scenario gets a fresh emulated org and a real `sfsign run` process (see tests/chaos/chaos_support.py):
(a) kill -9 during a 200-record burst, 12 cycles; (b) the burst under 10 % 503, 5 % UNABLE_TO_LOCK_ROW,
row-locked records, a token revoked every 30 s, the stream dropped every 20 s and one forgotten client;
(c) the daemon down past the retention window; (d) the emulator restarted mid-burst; plus uploads whose
answer is cut or held while the daemon is killed. Prints scenario, records, kills, faults injected, lost,
duplicated and wall time; exits 1 if any scenario broke the invariant (the problems are printed).
Daemon logs stay in the work directory (a temporary one unless --work-dir is given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "chaos"))

import chaos_support as cs  # the harness lives with the tests that share it


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


async def run(names: list[str], scale: cs.Scale, seed: int, work: Path, transport: str) -> list[cs.ChaosResult]:
    pki = await asyncio.to_thread(cs.make_pki, work / "pki")
    results = []
    for n, name in enumerate(names):
        rng = random.Random(f"{seed}/{name}")
        print(f"[{time.strftime('%H:%M:%S')}] {name} ({scale.name}) ...", flush=True)
        try:
            async with cs.chaos_org(work / f"{n:02d}-{name}", pki, scale, transport) as org:
                result = await cs.SCENARIOS[name](org, rng)
        except cs.ChaosFailure as exc:
            result = cs.ChaosResult(name, 0)
            result.notes["harness failure"] = str(exc)
        results.append(result)
        print(f"    {result.row()}\n    {result.notes}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", choices=["long", "short"], default="long")
    parser.add_argument("--only", help=f"comma-separated scenarios among {', '.join(cs.SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--transport", choices=["pubsub", "cometd"],
                        default=os.environ.get("SFSIGN_TRANSPORT", "pubsub"),
                        help="the daemon's event transport (default: $SFSIGN_TRANSPORT, else pubsub, as sfsign's)")
    parser.add_argument("--work-dir", help="keep emulator data and daemon logs here")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(cs.SCENARIOS)
    unknown = [n for n in names if n not in cs.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    scale = cs.LONG if args.scale == "long" else cs.SHORT
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sfsign-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"seed {args.seed}, transport {args.transport}, work dir {work}, {os.cpu_count()} cores", flush=True)
    started = time.monotonic()
    results = asyncio.run(run(names, scale, args.seed, work, args.transport))
    rows = [r.row() for r in results]
    print()
    print(_table(rows, ["scenario", "records", "kills", "faults injected", "lost", "duplicated", "wall time"]))
    print()
    for r in results:
        print(f"{r.scenario}: {r.row()['fault detail'] or '-'}; {json.dumps(r.notes, default=str)}")
    print(f"\ntotal {time.monotonic() - started:.0f} s, seed {args.seed}")
    broken = [r for r in results if r.verdict is None or not r.verdict.ok]
    for r in broken:
        problems = r.verdict.problems if r.verdict else [str(r.notes.get("harness failure"))]
        print(f"\nINVARIANT BROKEN in {r.scenario}:\n  " + "\n  ".join(problems[:50]))
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "scale": scale.name, "rows": rows,
                                               "notes": {r.scenario: r.notes for r in results}},
                                              indent=2, default=str))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
