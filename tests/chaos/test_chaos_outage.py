"""Chaos (c) and (d): the daemon away longer than Salesforce keeps events; Salesforce itself restarting."""

from __future__ import annotations

import random

from chaos_support import (
    ChaosOrg,
    Scale,
    scenario_blind_restart,
    scenario_emulator_restart,
    scenario_reconcile_before_subscribe,
    scenario_retention,
)


async def test_daemon_down_past_the_retention_window_reconciles_and_signs_every_missed_record(
    org: ChaosOrg, rng: random.Random, scale: Scale
) -> None:
    result = await scenario_retention(org, rng)
    print(result.row(), result.notes)
    assert result.notes["invalid replay id refused"], "the restart never met an invalid replay id"
    missed = scale.records - scale.records // 3
    assert result.notes["jobs of missed records by source"] == {"reconcile": missed}
    result.assert_invariant()


async def test_emulator_restarted_mid_burst_with_its_state_kept(
    org: ChaosOrg, rng: random.Random, scale: Scale
) -> None:
    result = await scenario_emulator_restart(org, rng)
    print(result.row(), result.notes)
    assert result.faults["emulator restart"] == scale.emulator_restarts
    result.assert_invariant()


async def test_records_moved_while_down_before_any_position_was_stored_are_signed(
    org: ChaosOrg, rng: random.Random
) -> None:
    # Killed before the first event of the channel was committed: no position stored, the restart
    # subscribes at -1, and only a reconciliation can find what moved meanwhile.
    result = await scenario_blind_restart(org, rng)
    print(result.row(), result.notes)
    result.assert_invariant()


async def test_record_moved_between_the_startup_reconciliation_and_the_subscription_is_signed(
    org: ChaosOrg, rng: random.Random
) -> None:
    # A slow handshake (3 s latency on /cometd/, on Pub/Sub on Subscribe) widens the window, as a flaky
    # network would.
    result = await scenario_reconcile_before_subscribe(org, rng)
    print(result.row(), result.notes)
    result.assert_invariant()
