"""The supervisor stops its parts in the order they declare, whatever their names: intake and the loops
that make new work first (cancelled, then closed), then the worker (drained, then cancelled)."""

from __future__ import annotations

import asyncio

from sfsign.parts import Part, Stop, stop_parts


async def _stop_parts_in_order_with_fake_parts(names: list[str], stops: dict[str, Stop]) -> list[str]:
    seen: list[str] = []

    def part(name: str) -> Part:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append(f"{name} cancelled")
                raise

        async def drain() -> None:
            seen.append(f"{name} drained")
            await asyncio.sleep(0)  # a drain lets work finish: the part still runs meanwhile

        async def close() -> None:
            seen.append(f"{name} closed")

        draining = stops[name] is Stop.IN_FLIGHT
        return Part(name, run, stop=stops[name], drain=drain if draining else None, close=close)

    running = [(p, asyncio.create_task(p.run(), name=p.name)) for p in map(part, names)]
    await asyncio.sleep(0)  # every part is running
    await stop_parts(running)
    assert all(task.cancelled() for _, task in running)
    return seen


async def test_new_work_stops_before_the_worker_drains_whatever_the_start_order_with_fake_parts() -> None:
    stops = {"intake": Stop.NEW_WORK, "audit": Stop.NEW_WORK, "worker": Stop.IN_FLIGHT, "retention": Stop.NEW_WORK}
    seen = await _stop_parts_in_order_with_fake_parts(["intake", "audit", "worker", "retention"], stops)
    closed = [event for event in seen if event.endswith("closed")]
    assert closed == ["retention closed", "audit closed", "intake closed", "worker closed"]  # reverse start order
    assert seen.index("intake closed") < seen.index("worker drained") < seen.index("worker cancelled")
    assert {"retention cancelled", "audit cancelled", "intake cancelled"} <= set(seen)


async def test_a_part_started_first_but_declared_in_flight_still_drains_last_with_fake_parts() -> None:
    stops = {"worker": Stop.IN_FLIGHT, "intake": Stop.NEW_WORK}
    seen = await _stop_parts_in_order_with_fake_parts(["worker", "intake"], stops)
    assert seen.index("intake closed") < seen.index("worker drained") < seen.index("worker cancelled")
