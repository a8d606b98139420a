"""Chaos (a): the daemon process is killed with SIGKILL, over and over, while it works.

The daemon is a real `sfsign run` process; each kill takes its render/sign pool with it. Whatever step
a job was in, after the restarts every triggered record must carry exactly one signed file.
"""

from __future__ import annotations

import random

from chaos_support import ChaosOrg, Scale, scenario_crash_after_upload, scenario_kill


async def test_kill_9_at_random_moments_during_a_burst_signs_each_record_exactly_once(
    org: ChaosOrg, rng: random.Random, scale: Scale
) -> None:
    result = await scenario_kill(org, rng)
    print(result.row(), result.notes)
    assert result.kills == scale.kill_cycles
    result.assert_invariant()


async def test_kill_9_between_an_applied_upload_and_its_answer_finds_the_file_instead_of_uploading_again(
    org: ChaosOrg, rng: random.Random, scale: Scale
) -> None:
    # The emulator applies the ContentVersion insert and holds the answer; the daemon dies waiting.
    result = await scenario_crash_after_upload(org, rng)
    print(result.row(), result.notes)
    # Each kill left the job in `signed` with its upload marked in doubt: the case the guard is for.
    assert result.notes["jobs with the upload in doubt at the kills"] == ["signed"] * scale.crash_after_upload_cycles
    assert result.notes["log: uploads found by transaction id"] == scale.crash_after_upload_cycles
    result.assert_invariant()
