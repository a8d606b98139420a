"""The suite-wide secret scan (tests/secret_scan.py) must actually find what it looks for."""

from __future__ import annotations

from secret_scan import find_secrets, register_secret


def test_scan_finds_registered_secrets_pem_keys_tokens_and_bearer_headers() -> None:
    register_secret("s3cr3t-passphrase-for-the-scanner-test")
    assert find_secrets("unlocking with s3cr3t-passphrase-for-the-scanner-test") == [
        "registered secret (38 characters)"
    ]
    pem_header = "-----BEGIN " + "ENCRYPTED PRIVATE KEY-----"  # split: no key-shaped text in the repository
    assert find_secrets(pem_header + "\nMIIF") == ["PEM private key"]
    assert find_secrets("token 00DDn0000000001!AQabcdefghijklmnopqrstuvwxyz.0123") == ["Salesforce access token"]
    assert find_secrets("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345") == ["bearer credential"]


def test_scan_passes_redacted_lines_and_certificates() -> None:
    assert find_secrets('authorization="[redacted]" token=*** -----BEGIN CERTIFICATE-----') == []
