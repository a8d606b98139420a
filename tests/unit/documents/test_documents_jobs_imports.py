"""Pool processes import `sfsign.documents.jobs` and nothing of the Salesforce clients (memory and start-up
per process, docs/benchmarks.md): of the Salesforce package they load the vocabulary, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_pool_entry_points_load_no_salesforce_client() -> None:
    code = (
        "import json, sys, sfsign.documents.jobs; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sfsign.salesforce') "
        "or m.split('.')[0] in ('simple_salesforce', 'httpx', 'requests'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == ["sfsign.salesforce", "sfsign.salesforce.names"]


def test_importing_the_salesforce_package_loads_no_client() -> None:
    code = "import sys, sfsign.salesforce; print(sorted(m for m in sys.modules if m.startswith('sfsign.salesforce')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "['sfsign.salesforce']"


def test_the_package_still_offers_its_names_on_first_use() -> None:
    import sfsign.salesforce as salesforce
    from sfsign.salesforce.rest import SalesforceRest
    from sfsign.salesforce.stream import StreamClient

    assert salesforce.SalesforceRest is SalesforceRest and salesforce.StreamClient is StreamClient
    assert all(getattr(salesforce, name) is not None for name in salesforce.__all__)
