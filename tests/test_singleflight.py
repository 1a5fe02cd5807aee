"""Concurrent callers share one call; a cancelled leader does not take the others with it."""

from __future__ import annotations

import asyncio

import pytest

from s3latent.singleflight import SingleFlight


async def test_concurrent_callers_share_one_call() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 42

    results = await asyncio.gather(*(flight.run("k", work) for _ in range(5)))
    assert calls == 1
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]
    assert {value for value, _ in results} == {42}
    assert len(flight) == 0


async def test_errors_reach_every_caller_and_the_next_call_starts_fresh() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def broken() -> int:
        await asyncio.sleep(0.02)
        raise ValueError("backend down")

    results = await asyncio.gather(*(flight.run("k", broken) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)

    async def fine() -> int:
        return 7

    assert await flight.run("k", fine) == (7, False)


async def test_a_cancelled_leader_leaves_the_waiters_to_run_it_again() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started = asyncio.Event()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.05)
        return calls

    leader = asyncio.ensure_future(flight.run("k", work))
    await started.wait()
    waiter = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    value, shared = await waiter
    assert (value, shared) == (2, False) and calls == 2


async def test_keys_are_independent() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def work(name: str) -> str:
        await asyncio.sleep(0.01)
        return name

    out = await asyncio.gather(flight.run("a", lambda: work("a")),
                               flight.run("b", lambda: work("b")))
    assert out == [("a", False), ("b", False)]
