"""Shared fakes for the Salesforce client unit tests (no network, no emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sf_fakes import FakeAuth


@pytest.fixture
def fake_auth() -> FakeAuth:
    return FakeAuth()


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Path, Any]:
    """A throwaway RSA key written to tmp_path (never into the repo); returns (path, public key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "server.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path, key.public_key()
