"""The API-budget governor's threshold (usage fed by a fake source, as Sforce-Limit-Info would)."""

from __future__ import annotations

from sfsign.governor import ApiGovernor


def test_governor_constrains_at_the_threshold_share_with_fake_usage() -> None:
    usage: dict[str, tuple[int, int] | None] = {"now": None}
    governor = ApiGovernor(lambda: usage["now"], threshold=0.8)
    assert governor.share() is None and not governor.constrained()  # nothing seen yet: no reason to wait
    usage["now"] = (79_999, 100_000)
    assert not governor.constrained()
    usage["now"] = (80_000, 100_000)
    assert governor.share() == 0.8 and governor.constrained()
    usage["now"] = (10, 0)  # a nonsensical header never blocks work
    assert governor.share() is None and not governor.constrained()
