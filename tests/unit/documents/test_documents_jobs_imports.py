"""Pool processes import `sfsign.documents.jobs` and nothing of the Salesforce clients (memory and start-up
per process, docs/benchmarks.md), so the one Salesforce length it needs is a copy, pinned here."""

from __future__ import annotations

import subprocess
import sys

from sfsign.documents.jobs import VERDICT_MAX_LENGTH
from sfsign.salesforce.names import VALIDATION_LENGTH


def test_the_validation_verdict_is_cut_to_what_the_record_field_holds() -> None:
    assert VERDICT_MAX_LENGTH == VALIDATION_LENGTH


def test_the_pool_entry_points_load_no_salesforce_client() -> None:
    unwanted = ("sfsign.salesforce", "simple_salesforce", "httpx", "requests")
    code = f"import sys, sfsign.documents.jobs; print(','.join(m for m in {unwanted!r} if m in sys.modules) or 'none')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "none"
