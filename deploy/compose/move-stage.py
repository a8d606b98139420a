"""Demo only: move one seeded Opportunity to "Proposal/Price Quote", as a sales rep would.

Run inside the emulator service (`docker compose exec emulator python /config/move-stage.py --wait 60`):
the emulator's control API listens on its loopback only. sfsign then renders, signs and uploads the
proposal; `--wait S` waits up to S seconds for `Sign_Status__c` to become Signed (exit 1 if not).
scripts/wheel-check.sh runs it against the daemon installed from the wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.request
from typing import Any

STAGE = "Proposal/Price Quote"


class Control:
    """The emulator's control API, configured from its connection file (which holds the control token)."""

    def __init__(self, connection_file: str) -> None:
        with open(connection_file, encoding="utf-8") as fh:
            details = json.load(fh)
        self._url = details["url"] + "/_control/"
        self._token = details["control_token"]
        self._context = ssl.create_default_context(cafile=details["ca_file"])

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self._url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Control-Token": self._token},
            method="POST",
        )
        with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
            return json.load(response)

    def query(self, soql: str) -> list[dict[str, Any]]:
        return list(self.post("query", {"q": soql})["records"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for Sign_Status__c = Signed")
    args = parser.parse_args(argv)
    control = Control(os.environ.get("EMULATOR_CONNECTION", "/data/emulator/connection.json"))

    records = control.query(f"SELECT Id FROM Opportunity WHERE StageName != '{STAGE}' LIMIT 1")
    if not records:
        print("every Opportunity is already in the proposal stage", file=sys.stderr)
        return 1
    record_id = records[0]["Id"]
    control.post(f"records/Opportunity/{record_id}", {"fields": {"StageName": STAGE}})
    print(f"moved Opportunity {record_id} to {STAGE!r}")
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    status = None
    while time.monotonic() < deadline:
        rows = control.query(f"SELECT Sign_Status__c, Sign_Error__c FROM Opportunity WHERE Id = '{record_id}'")
        status = rows[0].get("Sign_Status__c") if rows else None
        if status == "Signed":
            print(f"Opportunity {record_id}: Signed")
            return 0
        if status == "Error":
            print(f"Opportunity {record_id}: Error: {rows[0].get('Sign_Error__c')}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"Opportunity {record_id}: not signed within {args.wait:g} s (status {status!r})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
