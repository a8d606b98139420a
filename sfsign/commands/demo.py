"""`sfsign demo`: the whole product in one command, against the embedded Salesforce emulator.

It starts the emulator on its own thread (a separate event loop, like a remote org), generates a
demo PKI with its timestamp authority, OCSP responder and CRLs on 127.0.0.1, starts the real daemon
with the JWT bearer flow, then acts as sales reps would: three opportunities move to a signing stage,
one quote is approved and one "Send for signature" platform event is published. The rules sign at
each PAdES level (B-B, B-T, B-LT, B-LTA). It waits for the five records to show `Signed` at their
profile's level, downloads each signed file through the REST API, checks it is the file the daemon
signed, writes it to `./demo-output/` and prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from sfsign.commands.demo_customer import DemoCustomer, completed_copy_sent, quote_contact, timeline
from sfsign.commands.demo_rules import PASSPHRASE_ENV, demo_rules_text
from sfsign.config import Rules, Settings, load_rules
from sfsign.connections import SalesforceSession
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localmail.server import LocalMailServer, ServerSecurity
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services
from sfsign.ops.logging import configure_logging
from sfsign.salesforce.names import (
    STATUS_COMPLETED,
    STATUS_ERROR,
    STATUS_EXPIRED,
    STATUS_REFUSED,
    STATUS_SIGNED,
    STATUS_VOIDED,
    Record,
    SignRequest,
)

log = structlog.get_logger("sfsign.demo")

# (object, seeded record name, acting rep, how the record gets to signature)
SCENARIO: list[tuple[str, str, str, str]] = [
    ("Opportunity", "Acme Industries - Platform Renewal 2027", "marc.dubois@northwind.example", "stage"),
    ("Opportunity", "Globex - Enterprise Rollout", "emily.carter@northwind.example", "negotiation"),
    ("Opportunity", "Initech - Onboarding Package", "emily.carter@northwind.example", "won"),
    ("Quote", "Enterprise Upgrade - Angebot", "lena.hoffmann@northwind.example", "status"),
    ("Opportunity", "Acme Industries - API Add-on", "marc.dubois@northwind.example", "event"),
]
# The sixth, when the demo's rules have the customer rule: the quote is presented and its contact signs.
CUSTOMER_ROW = ("Quote", "Globex Enterprise Rollout - Proposal", "emily.carter@northwind.example", "customer")
_ENDED = (STATUS_ERROR, STATUS_REFUSED, STATUS_EXPIRED, STATUS_VOIDED)  # a record that will not be signed
INTERACTIVE_WAIT_S = 900.0
_STAGE_FOR = {"stage": "Proposal/Price Quote", "negotiation": "Negotiation/Review", "won": "Closed Won"}

@dataclass
class DemoRow:
    sobject: str
    record_id: str
    name: str
    trigger: str
    status: str = ""
    level: str = ""
    transaction_id: str = ""
    document_id: str = ""
    file: str = ""
    ms: int | None = None
    error: str = ""
    certificate: str = ""
    timeline: list[str] = field(default_factory=list)


@contextlib.contextmanager
def demo_pki(work: Path) -> Iterator[tuple[DemoPki, PkiServices]]:
    """The demo PKI and its TSA/OCSP/CRL services; the passphrase lives only in this process's environment."""
    passphrase = secrets.token_urlsafe(24)
    os.environ[PASSPHRASE_ENV] = passphrase
    pki, services = start_demo_pki_services(work / "pki", passphrase=passphrase, org_name="Northwind Cloud GmbH")
    try:
        yield pki, services
    finally:
        services.stop()


def write_demo_config(work: Path, pki: DemoPki, services: PkiServices, *, customer: bool = False) -> Rules:
    rules_file = work / "rules.yaml"
    rules_file.write_text(demo_rules_text(pki, services.tsa_url, customer=customer))
    return load_rules(rules_file)


def daemon_settings(emulator: EmulatorThread, work: Path, rules_file: Path, **overrides: Any) -> Settings:
    """Settings for a daemon talking to `emulator` with the JWT bearer flow (ignores `.env`)."""
    login = emulator.login
    values: dict[str, Any] = dict(
        login_url=emulator.url,
        auth_flow="jwt",
        consumer_key=login.consumer_key,
        username=login.username,
        private_key_file=login.private_key_file,
        ca_bundle=emulator.ca_file,  # the emulator's CA signs its HTTPS and its Pub/Sub (gRPC) server alike
        pubsub_url=emulator.pubsub_target,  # used when SFSIGN_TRANSPORT (or an override) says pubsub
        data_dir=work / "daemon",
        rules_file=rules_file,
        log_level=os.environ.get("SFSIGN_LOG_LEVEL", "WARNING"),
        log_format="console",
        ops_port=0,  # any free port: the demo and the tests never collide with a daemon on 8787
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


DEMO_MAIL_FROM = "Northwind Cloud GmbH <contracts@northwind.example>"
MAILBOX = "mailbox"


@contextlib.contextmanager
def local_relay(settings: Settings) -> Iterator[tuple[Settings, LocalMailServer | None]]:
    """The relay of the demo and the tests: with SFSIGN_SMTP_URL unset, the embedded SMTP server on 127.0.0.1
    keeping each mail as an .eml file under `<data dir>/mailbox` (the server is None when a relay is set),
    and the signing pages on a free port of this host, so the links in its mails open them."""
    if settings.smtp_url is not None:
        yield settings, None
        return
    with LocalMailServer(settings.data_dir / MAILBOX, security=ServerSecurity.PLAIN) as server:
        port = free_port()
        yield settings.model_copy(update={
            "smtp_url": server.url, "mail_from": settings.mail_from or DEMO_MAIL_FROM,
            "signing_port": port, "signing_url": f"http://127.0.0.1:{port}"}), server


def free_port() -> int:
    """A port nothing listens on now (the daemon binds it a moment later; SO_REUSEADDR makes that safe)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _find(control: ControlClient, sobject: str, name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    rows = await control.query(f"SELECT Id FROM {sobject} WHERE Name = '{escaped}'")
    if len(rows) != 1:
        raise RuntimeError(f"the emulator's seed data has no single {sobject} named {name!r}")
    return str(rows[0]["Id"])


async def _act(control: ControlClient, row: DemoRow, user: str) -> None:
    if row.trigger in _STAGE_FOR:
        await control.update("Opportunity", row.record_id, {"StageName": _STAGE_FOR[row.trigger]}, user=user)
    elif row.trigger in ("status", "customer"):
        status = "Approved" if row.trigger == "status" else "Presented"
        await control.update("Quote", row.record_id, {"Status": status}, user=user)
    else:
        await control.publish(
            SignRequest.NAME,
            {SignRequest.RECORD_ID: row.record_id, SignRequest.REASON: "Customer asked for the signed proposal today"},
            user=user,
        )


async def run_scenario(
    emulator: EmulatorThread, settings: Settings, rules: Rules, output_dir: Path, timeout_s: float = 120.0,
    *, interactive: bool = False,
) -> list[DemoRow]:
    daemon = Daemon(settings, rules)
    runner = asyncio.create_task(daemon.run(), name="daemon")
    control = ControlClient(emulator.url, emulator.control_token, emulator.ca_file)
    rows: list[DemoRow] = []
    try:
        ready = asyncio.create_task(daemon.ready.wait())
        done, _ = await asyncio.wait({ready, runner}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            _stopped(daemon, runner)
        if ready not in done:
            raise RuntimeError("the daemon did not subscribe to the emulator within 60 s")
        targets: dict[str, str] = {}
        customer = rules.by_name("quote-presented") is not None
        for sobject, name, user, trigger in [*SCENARIO, *([CUSTOMER_ROW] if customer else [])]:
            row = DemoRow(sobject, await _find(control, sobject, name), name, trigger)
            rows.append(row)
            targets[row.record_id] = _target_level(rules, sobject, trigger)
            await _act(control, row, user)
        signer = None
        if customer:
            signer = asyncio.create_task(_customer_signs(control, rows[-1], settings, interactive))
            if interactive:
                timeout_s = max(timeout_s, INTERACTIVE_WAIT_S)
        await _wait_for_rows(control, daemon, runner, rows, targets, time.monotonic() + timeout_s)
        if signer is not None:
            signer.cancel()  # a customer still waiting at the timeout (done: no effect)
            [problem] = await asyncio.gather(signer, return_exceptions=True)
            if isinstance(problem, Exception) and not rows[-1].error:
                rows[-1].error = f"the demo customer could not sign: {problem}"
            if rows[-1].status == STATUS_COMPLETED:
                await completed_copy_sent(daemon.outbox, rows[-1].transaction_id)
            rows[-1].timeline = await timeline(daemon.outbox, rows[-1].transaction_id)
        await _collect_files(daemon, settings, rows, output_dir)
    finally:
        await control.aclose()
        daemon.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 60)
    return rows


async def _wait_for_rows(control: ControlClient, daemon: Daemon, runner: asyncio.Task[None], rows: list[DemoRow],
                         targets: dict[str, str], deadline: float) -> None:
    """Poll each record until it ended (signed at its profile's level, or a status that will not change)
    or the deadline passed (`Timeout`), filling in what the record shows."""
    pending = list(rows)
    while pending and time.monotonic() < deadline:
        if runner.done():
            _stopped(daemon, runner)
        for row in list(pending):
            record = await control.get(
                row.sobject, row.record_id,
                [Record.STATUS, Record.TRANSACTION_ID, Record.DOCUMENT_ID, Record.ERROR, Record.LEVEL],
            )
            status = record.get(Record.STATUS)
            reached = record.get(Record.LEVEL) == targets[row.record_id] or bool(record.get(Record.ERROR))
            if status in _ENDED or (status in (STATUS_SIGNED, STATUS_COMPLETED) and reached):
                row.status = str(record[Record.STATUS])
                row.level = str(record.get(Record.LEVEL) or "")
                row.transaction_id = str(record.get(Record.TRANSACTION_ID) or "")
                row.document_id = str(record.get(Record.DOCUMENT_ID) or "")
                row.error = str(record.get(Record.ERROR) or "")
                pending.remove(row)
        await asyncio.sleep(0.1)
    for row in pending:
        row.status = "Timeout"


async def _customer_signs(control: ControlClient, row: DemoRow, settings: Settings, interactive: bool) -> None:
    """The customer of the sixth document: played over HTTP from the mailbox, or (interactive) a person in
    their own browser, told where the invitation is."""
    address, name = await quote_contact(control, row.record_id)
    mailbox = settings.data_dir / MAILBOX
    if not interactive:
        await DemoCustomer(mailbox, address, name).sign()
        return
    link = await DemoCustomer(mailbox, address, name).invitation_link()
    print(f"\n  {name} <{address}> is invited to sign: open\n    {link}\n  in your browser; the one-time code "
          f"arrives as an .eml file in {mailbox} (open it with any mail client or a text editor).\n"
          f"  Waiting up to {INTERACTIVE_WAIT_S // 60:.0f} minutes for the signature ...", flush=True)


def _target_level(rules: Rules, sobject: str, trigger: str) -> str:
    """The level the record should end at: its rule's profile (events use the object's first rule)."""
    if trigger == "customer":
        rule = rules.by_name("quote-presented")
        assert rule is not None
        return rules.profiles[rule.profile].level
    if trigger in _STAGE_FOR:
        rule = next(r for r in rules.for_object(sobject) if _STAGE_FOR[trigger] in r.values)
    else:
        rule = rules.for_object(sobject)[0]
    return rules.profiles[rule.profile].level


def _stopped(daemon: Daemon, runner: asyncio.Task[None]) -> None:
    """The daemon ended early: Ctrl-C (its signal handler stopped it) or a failure."""
    runner.result()  # raises what stopped the daemon
    if daemon.stopped_by is not None:
        raise KeyboardInterrupt
    raise RuntimeError("the daemon stopped unexpectedly")


async def _collect_files(daemon: Daemon, settings: Settings, rows: list[DemoRow], output_dir: Path) -> None:
    """Download each signed file through REST and check it is byte for byte what the daemon signed."""
    jobs = {j.transaction_id: j for j in await daemon.outbox.jobs()}
    async with SalesforceSession(settings) as session:
        await asyncio.to_thread(output_dir.mkdir, parents=True, exist_ok=True)
        for row in rows:
            job = jobs.get(row.transaction_id)
            if row.status not in (STATUS_SIGNED, STATUS_COMPLETED) or job is None or not job.content_version_id:
                continue
            final = bool(job.ltv_version_id) or row.status == STATUS_COMPLETED  # the completed copy is the ltv one
            data = await session.rest.download_version_data(job.ltv_version_id or job.content_version_id)
            if hashlib.sha256(data).hexdigest() != (job.ltv_sha256 if final else job.sha256):
                raise RuntimeError(f"the file on {row.record_id} is not the document sfsign signed")
            target = output_dir / (job.file_name or f"{row.transaction_id}.pdf")
            await asyncio.to_thread(target.write_bytes, data)
            row.file = str(target)
            if job.certificate_version_id:
                sealed = await session.rest.download_version_data(job.certificate_version_id)
                if hashlib.sha256(sealed).hexdigest() != job.certificate_sha256:
                    raise RuntimeError(f"the certificate of completion on {row.record_id} is not the one sfsign made")
                certificate = target.with_name(f"{target.stem} - certificate of completion.pdf")
                await asyncio.to_thread(certificate.write_bytes, sealed)
                row.certificate = str(certificate)
            if job.event_time_ms and job.signed_visible_at:
                row.ms = round(job.signed_visible_at * 1000 - job.event_time_ms)


def print_table(rows: list[DemoRow], out: object = sys.stdout) -> None:
    headers = ("record", "name", "via", "status", "level", "transaction id", "file id", "ms to Signed")
    table = [
        (r.record_id, r.name[:40], r.trigger, r.status, r.level, r.transaction_id, r.document_id,
         "" if r.ms is None else str(r.ms))
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line, file=out)  # type: ignore[call-overload]
    print("  ".join("-" * w for w in widths), file=out)  # type: ignore[call-overload]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)), file=out)  # type: ignore[call-overload]
    for r in rows:
        if r.error:
            print(f"  {r.record_id}: {r.error}", file=out)  # type: ignore[call-overload]
    for r in rows:
        if r.timeline:
            print(f"\n{r.name}: signed by the customer; the envelope's timeline (UTC):", file=out)  # type: ignore[call-overload]
            for line in r.timeline:
                print(f"  {line}", file=out)  # type: ignore[call-overload]
        if r.certificate:
            print(f"  certificate of completion: {r.certificate}", file=out)  # type: ignore[call-overload]


DEMO_ROOT_NAME = "demo-root-ca.pem"
_TRANSPORT_NAMES = {"cometd": "CometD (the Streaming API)", "pubsub": "the Pub/Sub API (gRPC)"}


def publish_root(pki: DemoPki, output_dir: Path) -> None:
    """Put the demo root certificate (public) beside the signed files: the work folder with the rest of
    the PKI is deleted at the end, and a recipient needs nothing else to verify the files offline."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / DEMO_ROOT_NAME
    target.write_bytes(pki.root_cert_pem_path.read_bytes())
    target.chmod(0o644)


def run_demo(output_dir: Path, keep_dir: Path | None = None, *, interactive: bool = False,
             transport: str | None = None) -> int:
    """`transport`: cometd or pubsub (None: SFSIGN_TRANSPORT, default pubsub), the daemon's event transport."""
    configure_logging(os.environ.get("SFSIGN_LOG_LEVEL", "WARNING"), "console")
    # Absolute: the demo writes these paths into its rules file, where relative ones would be read
    # relative to the rules file's folder (wd/wd/pki/signer.p12) instead of the working directory.
    work = (keep_dir or Path(tempfile.mkdtemp(prefix="sfsign-demo-"))).absolute()
    output_dir = output_dir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    emulator = EmulatorThread(data_dir=work / "emulator")
    try:
        print("starting the embedded Salesforce emulator ...", flush=True)
        emulator.start()
        print(f"  {emulator.url} (CA {emulator.ca_file})", flush=True)
        with demo_pki(work) as (pki, services):
            print(f"  demo PKI with TSA, OCSP and CRLs at {services.base_url}", flush=True)
            rules = write_demo_config(work, pki, services, customer=True)
            chosen = {"transport": transport} if transport else {}
            settings = daemon_settings(emulator, work, rules.source, ltv_delay_s=0.2, **chosen)
            print(f"  events over {_TRANSPORT_NAMES[settings.transport]}", flush=True)
            with local_relay(settings) as (settings, mail):
                if mail is not None:
                    kept = "" if keep_dir is not None else " (deleted at the end; keep it with --work-dir)"
                    print(f"  mails to signers go to {mail.directory} as .eml files{kept}", flush=True)
                print("starting sfsign and moving 3 opportunities, 2 quotes (one for the customer to sign) and "
                      "1 sign request ...", flush=True)
                rows = asyncio.run(run_scenario(emulator, settings, rules, output_dir, interactive=interactive))
            publish_root(pki, output_dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        emulator.stop()
        if keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    signed = [r for r in rows if r.status in (STATUS_SIGNED, STATUS_COMPLETED) and r.file]
    customers = sum(1 for r in signed if r.status == STATUS_COMPLETED)
    print(f"\n{len(signed)} of {len(rows)} documents signed ({customers} of them by the customer too); files in "
          f"{output_dir.resolve()}")
    print(f"check them as a recipient would, offline, trusting {DEMO_ROOT_NAME}: docs/verifying.md")
    return 0 if len(signed) == len(rows) else 1
