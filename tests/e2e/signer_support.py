"""Helpers for the end-to-end tests of customer signing through the running daemon: the demo's rules with a
`signers:` block, what the record and its Files show once an envelope completed (every signature checked by
pyHanko and pdfsig), and `Person`, a signer who works the signing pages over HTTP one form at a time."""

from __future__ import annotations

import asyncio
import hashlib
import html
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from e2e_support import pdfsig_required
from signing_site import CSRF

from sfsign.commands.demo_customer import DemoCustomer
from sfsign.commands.demo_rules import PASSPHRASE_ENV, demo_rules_text
from sfsign.config import Rules, load_rules
from sfsign.documents.completion_check import check_completed, pdfsig_results
from sfsign.documents.verify import validate_signed_pdf
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices
from sfsign.salesforce.rest import SalesforceRest

RECORD_FIELDS = ["Sign_Status__c", "Sign_Progress__c", "Sign_Completed_At__c", "Signed_Document_Id__c",
                 "Signed_Document_Url__c", "Sign_Document_Hash__c", "Sign_Level__c", "Sign_Error__c",
                 "Sign_Transaction_Id__c", "Signed_At__c", "Sign_Timestamp__c"]


def signer_rules(path: Path, services_pki: tuple[DemoPki, PkiServices, str], signers: str,
                 monkeypatch: Any) -> Rules:
    """The demo's rules on the local TSA, with `signers` (a `signers:` block indented for a rule) in the B-LTA
    rule `opportunity-proposal` (stage "Proposal/Price Quote"), written to `path` and loaded."""
    pki, services, passphrase = services_pki
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    text = demo_rules_text(pki, services.tsa_url)
    anchor = "  - name: opportunity-negotiation\n"
    assert anchor in text
    path.write_text(text.replace(anchor, signers + anchor))
    return load_rules(path)


async def record_files(control: ControlClient, record: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if any(link["LinkedEntityId"] == record for link in f["links"])]


async def completed(control: ControlClient, opportunity: str, within_s: float = 120.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            record = await control.get("Opportunity", opportunity, RECORD_FIELDS)
            assert record["Sign_Status__c"] != "Error", record
            if record["Sign_Status__c"] == "Completed":
                return record
            await asyncio.sleep(0.1)


async def check_final(control: ControlClient, rest: SalesforceRest, pki: DemoPki, opportunity: str,
                      fields: tuple[str, ...], signers: int) -> bytes:
    """The record shows Completed with the final PDF and the certificate as its two Files, and the final PDF
    holds every signature intact and valid, by pyHanko and by pdfsig."""
    record = await completed(control, opportunity)
    assert record["Sign_Progress__c"] == f"{signers} of {signers} signed" and record["Sign_Completed_At__c"], record
    assert record["Sign_Error__c"] is None and record["Sign_Level__c"] == "B-LTA", record
    files = await record_files(control, opportunity)
    assert len(files) == 2, files
    [final] = [f for f in files if f["ContentDocumentId"] == record["Signed_Document_Id__c"]]
    [certificate] = [f for f in files if f is not final]
    assert final["Sign_Transaction_Id__c"] == record["Sign_Transaction_Id__c"]
    assert certificate["Sign_Transaction_Id__c"] == f"{record['Sign_Transaction_Id__c']}-certificate"
    assert "Certificate of completion" in certificate["Title"]
    pdf = await rest.download_version_data(str(final["Id"]))
    assert hashlib.sha256(pdf).hexdigest() == record["Sign_Document_Hash__c"]
    roots = [pki.root_cert_pem_path]
    verdict = await asyncio.to_thread(check_completed, pdf, roots, fields)
    assert verdict.ok and not verdict.missing, verdict.lines()
    assert {s.field_name for s in verdict.signatures} == set(fields)
    assert all(s.intact and s.valid and s.trusted for s in verdict.signatures), verdict.lines()
    assert verdict.level == "B-LTA" and verdict.document_timestamps >= 1
    if pdfsig_required():
        by_field = await asyncio.to_thread(pdfsig_results, pdf)
        assert by_field is not None and {f: by_field.get(f) for f in fields} == {
            f: "Signature is Valid." for f in fields}, by_field
    sealed = await rest.download_version_data(str(certificate["Id"]))
    report = await asyncio.to_thread(validate_signed_pdf, sealed, roots)
    assert report.intact and report.valid and report.trusted, report
    return pdf


class Person(DemoCustomer):
    """A signer in a browser without script, one form at a time: `async with` opens the link of their newest
    invitation (waiting for the mail), then `ask_code`, `enter_code`, `press_sign` or `decline` post the page's
    forms with its CSRF token and the session cookie, each returning the state (`data-state`) of the page the
    answer shows. `DemoCustomer.sign` does all of it in one go; a test needs the steps between, a wrong
    code, a refusal."""

    def __init__(self, mailbox: Path, address: str, name: str) -> None:
        super().__init__(mailbox, address, name, timeout_s=60.0)
        self.link = ""
        self.page = ""
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Person:
        self.link = await self.invitation_link()
        self._client = httpx.AsyncClient(follow_redirects=True, timeout=30.0)
        self.page = await self._get(self._client, self.link)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def state(self) -> str:
        return self._state(self.page)

    async def reload(self) -> str:
        assert self._client is not None
        self.page = await self._get(self._client, self.link)
        return self.state

    async def ask_code(self) -> str:
        """Press "send me a code" and read the code from the mail that brings it."""
        before = len(await asyncio.to_thread(self.mailbox.to, self.address))
        await self.submit("code", {})
        mail = await self._wait_for_mail(lambda m: m.one_time_code is not None, skip=before)
        return str(mail.one_time_code)

    async def enter_code(self, code: str, *, status: int = 200) -> str:
        return await self.submit("verify", {"code": code}, status=status)

    async def press_sign(self) -> str:
        """Type the name, tick the consent and press Sign (`DemoCustomer.sign` is the whole way from the mail)."""
        return await self.submit("sign", {"name": self.name, "consent": "yes"})

    async def decline(self, reason: str) -> str:
        return await self.submit("decline", {"reason": reason})

    async def submit(self, action: str, form: dict[str, str], *, status: int = 200) -> str:
        """Post the page's `action` form; the answer must have `status` (after the redirect a change answers)."""
        assert self._client is not None
        token = CSRF.search(self.page)
        assert token is not None, f"the page ({self.state}) has no form to post {action!r} with"
        response = await self._client.post(f"{self.link}/{action}",
                                           data={"csrf": html.unescape(token.group(1)), **form})
        assert response.status_code == status, (action, response.status_code, response.text[:300])
        self.page = response.text
        return self.state
