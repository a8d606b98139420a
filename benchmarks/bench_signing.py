"""Customer signing (issue 14): how fast the invitation arrives, the signing page answers and a signature
completes the record, and whether 100 signers signing at once all get through.

Run: python benchmarks/bench_signing.py [--records 20] [--burst 100] [--out FILE]

`sfsign run` in a subprocess (as in the other benchmarks) with a rule that sends the document to the
opportunity's primary contact (`authentication: none`, so the figures are the daemon's, not a person
reading a code), the B-T profile; the relay is the embedded SMTP server on a thread of this process, the
signer an HTTP client of this process, like `sfsign demo`'s customer.

- invitation: the stage change (control call returned) → the invitation's .eml stored by the relay;
- page: the signing link's first byte, and page 1's image in full (the first request renders it);
- completed: the signer's "Sign" answered → the record shows `Completed` (the signature applied in the
  pool with its timestamp, the long-term data, the certificate of completion, both uploads, the write-back);
- burst: `--burst` envelopes sent at once, then every signer signs at the same moment; errors are any HTTP
  answer that is not the page, and any record not `Completed` within the timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _support import (
    REP,
    STAGE_BT,
    Stack,
    bench_stack,
    create_opportunities,
    machine_details,
    percentile,
    running_daemon,
    step,
)

from sfsign.commands.demo import free_port
from sfsign.localmail.mailbox import Mailbox
from sfsign.localmail.server import LocalMailServer, ServerSecurity

RULE = f"""\
  - name: bench-customer
    object: Opportunity
    field: StageName
    values: ["{STAGE_BT}"]
    template: proposal
    profile: seal-b-t
    file_name: "Offer {{number}} {{date}}.pdf"
    signers:
      authentication: none
      steps:
        - [{{contact_role: primary}}]
"""
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LINK = re.compile(r"https?://[^\s<>\"')]+/s/[A-Za-z0-9_\-.~]+")
POLL_S = 0.01


def _customer_rules(stack: Stack) -> None:
    """The benchmark rules with the B-T rule replaced by one whose document the customer signs."""
    text = stack.rules_file.read_text()
    start = text.index("  - name: bench-b-t\n")
    stack.rules_file.write_text(text[:start] + RULE)


async def _invitations(mailbox: Mailbox) -> list[str]:
    """Every signing link the stored mails carry, in the order the first mail with it arrived (a later mail
    for the same envelope, such as the completed copy, adds none)."""
    links: dict[str, None] = {}
    for mail in await asyncio.to_thread(mailbox.messages):
        for url in mail.links:
            if _LINK.fullmatch(url):
                links.setdefault(url)
                break
    return list(links)


async def _status(stack: Stack, record_id: str) -> str:
    return str((await stack.control.get("Opportunity", record_id, ["Sign_Status__c"])).get("Sign_Status__c"))


async def _sign(client: httpx.AsyncClient, link: str, signer: int = 1) -> float:
    """Open the link and sign; returns when the answer to "Sign" arrived (monotonic seconds). Each signer comes
    from an address of their own, as the proxy in front of the pages reports it (SFSIGN_SIGNING_PROXY_HOPS=1):
    from one address, 100 signers would meet the per-address rate limit, as they should."""
    client.headers["X-Forwarded-For"] = f"198.51.{100 + signer // 250}.{signer % 250 + 1}"
    page = await client.get(link)
    page.raise_for_status()
    token = _CSRF.search(page.text)
    if token is None:
        raise RuntimeError(f"no form on the signing page (state {page.text[:200]!r})")
    answer = await client.post(f"{link}/sign", data={"csrf": token.group(1), "name": "Bench Customer",
                                                     "consent": "yes"})
    answer.raise_for_status()
    return time.monotonic()


async def _first_byte_ms(client: httpx.AsyncClient, url: str) -> float:
    start = time.monotonic()
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for _ in response.aiter_bytes():
            return (time.monotonic() - start) * 1000
    return (time.monotonic() - start) * 1000


async def _full_ms(client: httpx.AsyncClient, url: str) -> float:
    start = time.monotonic()
    (await client.get(url)).raise_for_status()
    return (time.monotonic() - start) * 1000


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        await asyncio.sleep(POLL_S)


async def run(records: int, burst: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="sfsign-bench-signing-"))
    results: dict[str, object] = {}
    async with bench_stack(work) as stack:
        _customer_rules(stack)
        with step(f"creating {records + burst} opportunities"):
            lone_ids = await create_opportunities(stack.control, records, "Signing lone")
            burst_ids = await create_opportunities(stack.control, burst, "Signing burst")
        with LocalMailServer(work / "relay", security=ServerSecurity.PLAIN) as relay:
            port = free_port()
            env = {"SFSIGN_SMTP_URL": relay.url,
                   "SFSIGN_MAIL_FROM": "Northwind Contracts <contracts@northwind.example>",
                   "SFSIGN_SIGNING_PORT": str(port), "SFSIGN_SIGNING_URL": f"http://127.0.0.1:{port}",
                   "SFSIGN_SIGNING_PROXY_HOPS": "1"}
            mailbox = Mailbox(relay.directory)
            async with running_daemon(stack, "signing", warmup_s=3.0, extra_env=env) as daemon, \
                    httpx.AsyncClient(timeout=60, follow_redirects=True) as client:
                invite_ms: list[float] = []
                first_byte_ms: list[float] = []
                image_ms: list[float] = []
                completed_ms: list[float] = []
                with step(f"{records} lone envelopes"):
                    for record_id in lone_ids:
                        known = len(await _invitations(mailbox))
                        await stack.control.update("Opportunity", record_id, {"StageName": STAGE_BT}, user=REP)
                        start = time.monotonic()
                        await _until(lambda k=known: _more(mailbox, k), 60)
                        invite_ms.append((time.monotonic() - start) * 1000)
                        link = (await _invitations(mailbox))[-1]
                        first_byte_ms.append(await _first_byte_ms(client, link))
                        image_ms.append(await _full_ms(client, f"{link}/pages/1.png"))
                        signed = await _sign(client, link)
                        await _until(lambda r=record_id: _is(stack, r, "Completed"), 120)
                        completed_ms.append((time.monotonic() - signed) * 1000)
                        daemon.check_alive()
                results["lone"] = {name: _summary(values) for name, values in (
                    ("stage change → invitation in the mailbox", invite_ms),
                    ("signing page, first byte", first_byte_ms), ("page 1 image, whole", image_ms),
                    ("Sign → record Completed", completed_ms))}
                results["burst"] = await _burst(stack, mailbox, burst_ids)
                results["daemon steps (n, mean ms)"] = daemon.step_ms()
    return results


async def _burst(stack: Stack, mailbox: Mailbox, ids: list[str]) -> dict[str, object]:
    known = len(await _invitations(mailbox))
    with step(f"{len(ids)} envelopes at once, then {len(ids)} signers at once"):
        start = time.monotonic()
        await asyncio.gather(*(stack.control.update("Opportunity", r, {"StageName": STAGE_BT}, user=REP)
                               for r in ids))
        await _until(lambda: _more(mailbox, known + len(ids) - 1), 600)
        sent_s = time.monotonic() - start
        links = (await _invitations(mailbox))[known:]
        signing = time.monotonic()
        outcomes = await asyncio.gather(*(_sign_alone(link, i) for i, link in enumerate(links, 2)),
                                        return_exceptions=True)
        http_errors = [o for o in outcomes if isinstance(o, BaseException)]
        completed = 0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            statuses = await asyncio.gather(*(_status(stack, r) for r in ids))
            completed = statuses.count("Completed")
            if completed == len(ids) or "Error" in statuses:
                break
            await asyncio.sleep(0.5)
        return {"envelopes": len(ids), "all invitations in the mailbox after s": round(sent_s, 1),
                "signatures answered": len(links) - len(http_errors), "HTTP errors": len(http_errors),
                "records Completed": completed, "all signed → all Completed s": round(time.monotonic() - signing, 1),
                "first error": repr(http_errors[0])[:200] if http_errors else ""}


async def _sign_alone(link: str, signer: int) -> float:
    """One of the burst's signers, in a browser of their own (cookies, address)."""
    async with httpx.AsyncClient(timeout=120, follow_redirects=True) as client:
        return await _sign(client, link, signer)


async def _more(mailbox: Mailbox, known: int) -> bool:
    return len(await _invitations(mailbox)) > known


async def _is(stack: Stack, record_id: str, status: str) -> bool:
    return await _status(stack, record_id) == status


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50 ms": round(percentile(ordered, 50), 1), "p90 ms": round(percentile(ordered, 90), 1),
            "max ms": round(ordered[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--out")
    args = parser.parse_args()
    results = asyncio.run(run(args.records, args.burst))
    lines = [f"{k}: {v}" for k, v in machine_details().items()]
    for section, body in results.items():
        lines.append(f"\n{section}:")
        if isinstance(body, dict):
            lines += [f"  {k}: {v}" for k, v in body.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
