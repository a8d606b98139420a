"""Chaos fixtures: one signing PKI per session, a fresh emulated org per test, the scale and a seeded RNG.

The scale is SHORT (CI) unless SFSIGN_CHAOS=long. The RNG seed is printed (pytest shows it when a test
fails) and can be pinned with SFSIGN_CHAOS_SEED to replay a run's choices.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chaos_support import ChaosOrg, PkiMaterial, Scale, chaos_org, chaos_scale, make_pki


@pytest.fixture(scope="session")
def chaos_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiMaterial:
    return make_pki(tmp_path_factory.mktemp("chaos-pki"))


@pytest.fixture
def scale() -> Scale:
    return chaos_scale()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("SFSIGN_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed for {request.node.name}: SFSIGN_CHAOS_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def transport() -> str:
    """The daemon's event transport: SFSIGN_TRANSPORT (default pubsub, as the daemon's), as in
    tests/e2e/conftest.py, so `SFSIGN_TRANSPORT=cometd pytest tests/chaos` runs the suite on CometD; a test
    parametrises `transport` to pin one (a Bayeux-only fault, or a Pub/Sub one)."""
    return os.environ.get("SFSIGN_TRANSPORT", "pubsub")


@pytest.fixture
async def org(tmp_path: Path, chaos_pki: PkiMaterial, scale: Scale, transport: str) -> AsyncIterator[ChaosOrg]:
    async with chaos_org(tmp_path / "run", chaos_pki, scale, transport) as chaos:
        yield chaos
