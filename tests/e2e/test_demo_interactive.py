"""`sfsign demo --interactive` as a person runs it: the demo prints the signing link and where the mailbox is,
and waits. The person here is the demo's own HTTP customer (sfsign/commands/demo_customer.py), pointed only at
what the demo printed: the mailbox path to read the invitation and code from, and the link, which must be the
one in the invitation. The demo must then see the signature, report the document `Completed` and exit 0.

It runs the whole demo (six documents, real emulator, daemon and PKI) in a subprocess, like test_cli.py.
"""

from __future__ import annotations

import asyncio
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

from sfsign.commands.demo_customer import DemoCustomer

INVITED = re.compile(r"^\s+(?P<name>.+?) <(?P<address>[^>]+)> is invited to sign: open$")
MAILBOX_AT = re.compile(r"arrives as an \.eml file in (?P<mailbox>\S+) ")
GUARD_S = 600  # only against a hung demo; nothing is timed


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))
    into.put(None)


def _until(lines: queue.Queue[str | None], seen: list[str], wanted: re.Pattern[str]) -> re.Match[str]:
    """Read the demo's output until a line matches (every line kept in `seen` for the failure message)."""
    while (line := lines.get(timeout=GUARD_S)) is not None:
        seen.append(line)
        if found := wanted.search(line):
            return found
    raise AssertionError("the demo ended without printing it:\n" + "\n".join(seen))


def test_interactive_demo_prints_the_link_and_mailbox_and_reports_the_signature(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "sfsign.cli", "demo", "--interactive", "--work-dir", str(tmp_path / "work")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        invited = _until(lines, seen, INVITED)
        link = lines.get(timeout=GUARD_S) or ""
        seen.append(link)
        mailbox = Path(_until(lines, seen, MAILBOX_AT)["mailbox"])
        assert mailbox.is_dir() and link.strip().startswith("http"), seen
        customer = DemoCustomer(mailbox, invited["address"], invited["name"])
        assert asyncio.run(customer.invitation_link()) == link.strip()  # the printed link is the mailed one
        signed = asyncio.run(customer.sign())
        assert signed.final_state == "completed", signed
        assert demo.wait(timeout=GUARD_S) == 0, "\n".join(seen)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    while (line := lines.get(timeout=GUARD_S)) is not None:
        seen.append(line)
    output = "\n".join(seen)
    assert output.count(" Completed ") == 1 and output.count(" Signed ") == 5, output
    assert "6 of 6 documents signed (1 of them by the customer too)" in output
    assert re.search(r"^  \d\d:\d\d:\d\d\.\d{3}  completed\b", output, re.M), output
