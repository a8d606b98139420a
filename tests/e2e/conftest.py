"""End-to-end fixtures: the emulator on its own thread (like a remote org), the real daemon in the test's
event loop, a demo PKI generated per session, and a control client that acts as a sales rep."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from e2e_support import running_emulator
from secret_scan import register_secret
from structlog.testing import LogCapture

from sfsign.commands.demo import daemon_settings
from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki, create_demo_pki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services
from sfsign.salesforce.rest import SalesforceRest


@pytest.fixture(scope="session")
def pki_passphrase() -> str:
    passphrase = secrets.token_urlsafe(18)
    register_secret(passphrase)
    return passphrase


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, pki_passphrase: str) -> DemoPki:
    return create_demo_pki(tmp_path_factory.mktemp("pki"), org_name="Northwind Cloud GmbH",
                           passphrase=pki_passphrase)


@pytest.fixture
def services_pki(tmp_path: Path) -> Iterator[tuple[DemoPki, PkiServices, str]]:
    """A demo PKI of the test's own with its TSA and OCSP responder running: what the customer signatures
    and the long-term levels (B-LT, B-LTA) of a completed envelope need (the session's `pki` has no services)."""
    passphrase = secrets.token_urlsafe(18)
    register_secret(passphrase)
    pki, services = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase,
                                            org_name="Northwind Cloud GmbH", key_algorithm="ec-p256")
    try:
        yield pki, services, passphrase
    finally:
        services.stop()


@pytest.fixture
def rules(tmp_path: Path, pki: DemoPki, pki_passphrase: str, monkeypatch: pytest.MonkeyPatch) -> Rules:
    from sfsign.config import load_rules

    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path,
                                          passphrase_env=PASSPHRASE_ENV))
    return load_rules(path)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    with running_emulator(tmp_path) as emu:
        yield emu


@pytest.fixture
def transport() -> str:
    """The daemon's event transport: SFSIGN_TRANSPORT (default pubsub, as the daemon's), so `SFSIGN_TRANSPORT=cometd
    pytest tests/e2e` runs the suite on CometD; a test parametrises `transport` to run on both."""
    return os.environ.get("SFSIGN_TRANSPORT", "pubsub")


@pytest.fixture
def settings(emulator: EmulatorThread, tmp_path: Path, rules: Rules, transport: str) -> Settings:
    return daemon_settings(emulator, tmp_path, rules.source, cpu_workers=1, shutdown_grace_s=10,
                           log_level="INFO", transport=transport)


@pytest.fixture
async def control(emulator: EmulatorThread) -> AsyncIterator[ControlClient]:
    async with ControlClient(emulator.url, emulator.control_token, emulator.ca_file) as client:
        yield client


@pytest.fixture
async def rest(settings: Settings) -> AsyncIterator[SalesforceRest]:
    """A REST client of our own, to read what the daemon left in the org (as a second integration)."""
    async with SalesforceSession(settings) as session:
        yield session.rest


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event with the job's bound context merged in, as the production chain does."""
    previous = structlog.get_config()
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.configure(**previous)
