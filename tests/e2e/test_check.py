"""`sfsign check` against the emulator: ready as shipped, and a clear fix when the org lacks a field."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from e2e_support import run_cli

from sfsign.config import Rules, Settings
from sfsign.emulator.server import EmulatorThread
from sfsign.metadata import default_metadata_dir

REPO_METADATA = default_metadata_dir()


def _check(settings: Settings, *args: str, metadata_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = {"SFSIGN_METADATA_DIR": str(metadata_dir)} if metadata_dir is not None else {}
    return run_cli(["check", *args], settings, **extra)


async def test_check_passes_against_the_emulator(settings: Settings, rules: Rules) -> None:
    result = await asyncio.to_thread(_check, settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready: every check passed" in result.stdout
    for name in ("login", "API version", "object Opportunity", "object Quote", "object ContentVersion",
                 "object Sign_Request__e", "read Opportunity", "read Quote", "streaming", "signing certificate",
                 "template"):
        assert f"ok    {name}" in result.stdout, (name, result.stdout)
    as_json = json.loads((await asyncio.to_thread(_check, settings, "--json")).stdout)
    # CometD has one "streaming" check; Pub/Sub one "streaming <channel>" per channel
    assert {c["name"].split()[0] for c in as_json} >= {"login", "streaming", "template"}
    assert all(c["ok"] in (True, None) for c in as_json)


async def test_check_fails_with_a_fix_when_the_org_lacks_a_field(
    tmp_path: Path, rules: Rules, pki_passphrase: str
) -> None:
    """The org is deployed from a package without Sign_Level__c on Opportunity; sfsign expects it."""
    org_package = tmp_path / "org-package"
    shutil.copytree(REPO_METADATA, org_package)
    (org_package / "force-app/main/default/objects/Opportunity/fields/Sign_Level__c.field-meta.xml").unlink()
    emulator = EmulatorThread(data_dir=tmp_path / "emu", metadata_dir=org_package, long_poll_timeout_ms=3000)
    await asyncio.to_thread(emulator.start)
    try:
        from sfsign.commands.demo import daemon_settings

        settings = daemon_settings(emulator, tmp_path, rules.source)
        result = await asyncio.to_thread(_check, settings, metadata_dir=REPO_METADATA)
    finally:
        await asyncio.to_thread(emulator.stop)
    assert result.returncode == 1, result.stdout
    assert "FAIL  object Opportunity" in result.stdout and "Sign_Level__c is missing" in result.stdout
    assert "fix: deploy salesforce-metadata/" in result.stdout
    assert "not ready: 1 check(s) failed" in result.stdout
