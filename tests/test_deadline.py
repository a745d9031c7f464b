"""`proxy.deadline.Deadline` behaves as `asyncio.timeout` does: the same outcome for the same events, without
an async context manager."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.deadline import Deadline


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_past_the_deadline_the_block_raises_timeout_error_and_the_task_goes_on() -> None:
    async def main() -> tuple[bool, int, str]:
        deadline = Deadline(0.02)
        with pytest.raises(TimeoutError):
            with deadline:
                await asyncio.sleep(5)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # not cancelled any more: awaiting works
        return deadline.expired, task.cancelling(), "went on"

    assert run(main()) == (True, 0, "went on")


def test_within_the_deadline_nothing_happens_then_or_later() -> None:
    async def main() -> str:
        with Deadline(0.05):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # past the deadline: its timer was cancelled, nothing cancels the task now
        return "done"

    assert run(main()) == "done"


def test_no_deadline_arms_nothing() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)  # type: ignore[attr-defined]
        with Deadline(None) as deadline:
            during = len(loop._scheduled)  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        assert not deadline.expired
        return during - before

    assert run(main()) == 0


@pytest.mark.parametrize("use_deadline", [True, False], ids=["Deadline", "asyncio.timeout"])
def test_a_cancellation_from_elsewhere_passes_through_even_at_the_deadline(use_deadline: bool) -> None:
    """Cancelled by someone else (the client left) in the same loop turn as the deadline passed: both
    cancellations are pending, so the block lets CancelledError through, as asyncio.timeout does."""

    async def main() -> str:
        async def inner() -> None:
            if use_deadline:
                with Deadline(0.01):
                    time.sleep(0.05)  # noqa: ASYNC251 - hold the loop past both timers: they fire in one turn
                    await asyncio.sleep(5)
            else:
                async with asyncio.timeout(0.01):
                    time.sleep(0.05)  # noqa: ASYNC251 - as above
                    await asyncio.sleep(5)

        task = asyncio.get_running_loop().create_task(inner())
        asyncio.get_running_loop().call_later(0.01, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "finished"

    assert run(main()) == "cancelled"


def test_the_same_as_asyncio_timeout() -> None:
    """Side by side, for each case above: the exception that leaves the block and the task's cancel count."""

    async def case(use_deadline: bool, block_s: float, deadline_s: float | None, cancel_at_s: float | None) -> str:
        async def inner() -> str:
            try:
                if use_deadline:
                    with Deadline(deadline_s):
                        await asyncio.sleep(block_s)
                else:
                    async with asyncio.timeout(deadline_s):
                        await asyncio.sleep(block_s)
            except TimeoutError:
                task = asyncio.current_task()
                assert task is not None
                return f"timeout/{task.cancelling()}"
            return "ok"

        task = asyncio.get_running_loop().create_task(inner())
        if cancel_at_s is not None:
            await asyncio.sleep(cancel_at_s)
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    cases = [(0.01, 0.1, None), (0.2, 0.02, None), (0.2, None, None), (0.2, 1.0, 0.02), (0.2, 0.02, 0.05)]

    async def main() -> list[tuple[str, str]]:
        return [(await case(False, *c), await case(True, *c)) for c in cases]

    for expected, got in run(main()):  # type: ignore[attr-defined]
        assert got == expected


def test_a_deadline_never_fires_early() -> None:
    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with Deadline(0.1):
                await asyncio.sleep(5)
        return time.monotonic() - started

    elapsed = run(main())
    assert isinstance(elapsed, float) and elapsed >= 0.1
