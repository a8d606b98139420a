"""API versions as a real org serves them in Winter '27, and `sfsign check` reporting them.

Salesforce's API End-of-Life Policy: 31.0 through 68.0 are served, 21.0 through 30.0 were retired in
Summer '25 ("REST API returns the 410:GONE error code"); a version newer than the org's release is an
unknown resource (404 NOT_FOUND). The Streaming API accepts 37.0 and later. The daemon's default is
the current release, so a fresh installation talks to a real org at its newest version.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
from e2e_support import run_cli

from sfsign.config import Settings
from sfsign.emulator.server import EmulatorThread


@pytest.fixture
async def http(emulator: EmulatorThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, verify=ssl.create_default_context(cafile=str(emulator.ca_file)),
                                 timeout=30) as client:
        yield client


def _check(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["check"], settings, **env)


def _line(output: str, mark: str, name: str) -> str:
    """The detail of check `name` marked `mark` in `sfsign check`'s table (columns are padded)."""
    match = re.search(rf"^{mark}\s+{name}\s+(.*)$", output, flags=re.M)
    assert match is not None, output
    return match.group(1)


async def test_the_version_list_ends_with_winter_27_and_starts_at_31(http: httpx.AsyncClient) -> None:
    response = await http.get("/services/data/")
    assert response.status_code == 200
    versions = response.json()
    assert versions[-1] == {"label": "Winter '27", "url": "/services/data/v68.0", "version": "68.0"}
    assert versions[0] == {"label": "Summer '14", "url": "/services/data/v31.0", "version": "31.0"}
    assert [v["version"] for v in versions] == [f"{n}.0" for n in range(31, 69)]


async def test_a_retired_version_is_gone_and_an_unreleased_one_does_not_exist(http: httpx.AsyncClient) -> None:
    retired = await http.get("/services/data/v30.0/sobjects/")
    assert retired.status_code == 410
    [error] = retired.json()
    assert error["errorCode"] == "GONE" and error["message"]
    unreleased = await http.get("/services/data/v69.0/sobjects/")
    assert unreleased.status_code == 404
    assert unreleased.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]


async def test_streaming_serves_68_and_refuses_69(http: httpx.AsyncClient, emulator: EmulatorThread) -> None:
    handshake = [{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]
    [refused] = (await http.post("/cometd/69.0", json=handshake)).json()
    assert refused["successful"] is False
    assert refused["error"] == (
        "400::Unsupported API version. Only API versions '37.0' and later are supported. URI format: '/cometd/68.0'"
    )
    [mandatory] = (await http.post("/cometd", json=handshake)).json()
    assert mandatory["error"].endswith("URI format: '/cometd/68.0'")


async def test_check_uses_the_current_release_by_default_and_reports_the_org_highest(settings: Settings) -> None:
    result = await asyncio.to_thread(_check, settings)  # no SFSIGN_API_VERSION: the shipped default
    assert result.returncode == 0, result.stdout + result.stderr
    assert _line(result.stdout, "ok", "API version") == "68.0 (the org's highest)"


async def test_check_warns_when_an_older_version_is_configured(settings: Settings) -> None:
    result = await asyncio.to_thread(_check, settings, SFSIGN_API_VERSION="62.0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _line(result.stdout, "ok", "API version").startswith("62.0; warning: the org serves up to 68.0")


async def test_check_fails_with_the_fix_when_the_org_no_longer_serves_the_version(settings: Settings) -> None:
    result = await asyncio.to_thread(_check, settings, SFSIGN_API_VERSION="30.0")
    assert result.returncode == 1, result.stdout
    assert _line(result.stdout, "FAIL", "API version") == "30.0 is not served by this org (it serves up to 68.0)"
    assert "fix: set SFSIGN_API_VERSION=68.0" in result.stdout
    # one clear failure: the schema, query and streaming checks all carry the same version
    assert "not ready: 1 check(s) failed" in result.stdout, result.stdout
