"""The redaction processor: whatever a caller logs, secrets never reach the output."""

from __future__ import annotations

import json

import pytest
import structlog

from sfsign.ops.logging import MASK, configure_logging, redact

TOKEN = "00DDn0000000001MAA!AQ8AQJx3aF_r0pGs6pYt.s2Wqv_VmZkTlQ9eNw"
PEM_LABEL = "PRIVATE" + " KEY"  # spelled apart so no key-shaped text is committed


@pytest.mark.parametrize(
    ("event", "leak"),
    [
        ({"event": "login", "access_token": TOKEN}, TOKEN),
        ({"event": "x", "headers": {"Authorization": f"Bearer {TOKEN}"}}, TOKEN),
        ({"event": f"request failed with {TOKEN} inside"}, TOKEN),
        ({"event": "jwt", "detail": "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIzTVZHOSJ9.c2lnbmF0dXJlLXZhbHVl"}, "eyJhbGci"),
        ({"event": "cfg", "passphrase": "hunter2hunter2"}, "hunter2"),
        ({"event": "cfg", "pin": "1234"}, "1234"),
        ({"event": "k", "blob": f"-----BEGIN {PEM_LABEL}-----\nMIIE\n-----END {PEM_LABEL}-----"}, "MIIE"),
    ],
)
def test_redaction_masks_secret_keys_and_token_shaped_values(event: dict[str, object], leak: str) -> None:
    out = redact(None, "info", dict(event))
    assert leak not in json.dumps(out)
    assert MASK in json.dumps(out)


def test_job_context_and_redaction_in_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        log = structlog.get_logger("t")
        with structlog.contextvars.bound_contextvars(transaction_id="tx-1", record_id="006xx"):
            log.info("step done", token=TOKEN)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.reset_defaults()  # the logger is bound to capsys's stream, closed after this test
    assert line["transaction_id"] == "tx-1" and line["record_id"] == "006xx"
    assert line["token"] == MASK and TOKEN not in json.dumps(line)
