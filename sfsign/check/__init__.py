"""`sfsign check`: proves an org (and this installation) is ready, item by item, with the fix for each miss.

Every check uses the same code path the daemon uses — the same login, the same SOQL, the same
subscription, the same key loading and rendering — so "check passes" means "the daemon will work",
not "the fields look right". The checks that need no org are in `local.py` (the session with the mail relay
in `relay.py`), those against the org in `org.py`, the findings and their printing in `report.py`;
`run_checks` makes them all, in order.
"""

from __future__ import annotations

import asyncio

from sfsign.check.local import (
    check_data_dir,
    check_mail_relay,
    check_revocation_sources,
    check_signing,
    check_templates,
)
from sfsign.check.local import check_timestamps as check_timestamps
from sfsign.check.local import local_checks as local_checks
from sfsign.check.org import check_org
from sfsign.check.org import check_rules as check_rules
from sfsign.check.relay import check_relay_connection
from sfsign.check.report import Check as Check
from sfsign.check.report import StartupRefused as StartupRefused
from sfsign.check.report import as_json as as_json
from sfsign.check.report import refuse_on_failures as refuse_on_failures
from sfsign.check.report import render_failures as render_failures
from sfsign.check.report import render_table as render_table
from sfsign.config import Rules, Settings
from sfsign.connections import SalesforceSession


async def run_checks(settings: Settings, rules: Rules) -> list[Check]:
    checks = await asyncio.to_thread(check_data_dir, settings)
    checks += check_mail_relay(settings, rules)
    checks += await check_relay_connection(settings)
    checks += await asyncio.to_thread(check_signing, rules)
    checks += await asyncio.to_thread(check_revocation_sources, rules)
    checks += await asyncio.to_thread(check_templates, rules)
    checks += await check_timestamps(rules)
    async with SalesforceSession(settings) as session:
        checks += await check_org(settings, rules, session)
    return checks
