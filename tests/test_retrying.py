"""attempt_then_retry: no retry object unless the first attempt failed worth retrying."""

from __future__ import annotations

import pytest
import trio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from orrad.retrying import attempt_then_retry


class Flaky(Exception):
    pass


class Script:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0
        self.built = 0
        self.numbers: list[int] = []

    async def attempt(self) -> str:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        return "ok"

    def retrying(self) -> AsyncRetrying:
        self.built += 1

        def note(state: RetryCallState) -> None:
            self.numbers.append(state.attempt_number)

        return AsyncRetrying(stop=stop_after_attempt(4), sleep=trio.sleep, reraise=True,
                             retry=retry_if_exception_type(Flaky), before_sleep=note)


async def test_a_first_success_builds_no_retry_object() -> None:
    script = Script([])
    assert await attempt_then_retry(script.attempt, retryable=lambda e: True,
                                    retrying=script.retrying) == "ok"
    assert (script.calls, script.built) == (1, 0)


async def test_an_error_not_worth_retrying_is_raised_at_once() -> None:
    script = Script([ValueError("bad")])
    with pytest.raises(ValueError, match="bad"):
        await attempt_then_retry(script.attempt, retryable=lambda e: isinstance(e, Flaky),
                                 retrying=script.retrying)
    assert (script.calls, script.built) == (1, 0)


async def test_a_retried_call_counts_its_first_attempt(autojump_clock: object) -> None:
    script = Script([Flaky(), Flaky()])
    assert await attempt_then_retry(script.attempt, retryable=lambda e: isinstance(e, Flaky),
                                    retrying=script.retrying) == "ok"
    assert (script.calls, script.built) == (3, 1)
    assert script.numbers == [1, 2]  # the replayed first failure is attempt 1


async def test_retries_spent_raise_the_last_error(autojump_clock: object) -> None:
    script = Script([Flaky("1"), Flaky("2"), Flaky("3"), Flaky("4")])
    with pytest.raises(Flaky, match="4"):
        await attempt_then_retry(script.attempt, retryable=lambda e: isinstance(e, Flaky),
                                 retrying=script.retrying)
    assert script.calls == 4
