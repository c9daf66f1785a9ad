"""The circuit breaker on trio's clock (autojump_clock: no real waiting)."""

from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import MockClock

from orrad.federation.breaker import Admission, BreakerState, CircuitBreaker


def make(**kwargs: float) -> CircuitBreaker:
    options: dict[str, float] = {"failure_threshold": 3, "cooldown_s": 30.0,
                                 "max_cooldown_s": 100.0, "jitter": 0.0}
    options.update(kwargs)
    return CircuitBreaker("beta", wall_clock=lambda: 1000.0 + trio.current_time(),
                          failure_threshold=int(options["failure_threshold"]),
                          cooldown_s=options["cooldown_s"],
                          max_cooldown_s=options["max_cooldown_s"], jitter=options["jitter"])


def state(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call (mypy would otherwise narrow ``breaker.state``)."""
    return breaker.state


def fail(breaker: CircuitBreaker, times: int, error: str = "boom") -> None:
    for _ in range(times):
        assert breaker.admit() is Admission.ALLOW
        breaker.record_failure(error)


async def test_opens_after_n_consecutive_failures(autojump_clock: MockClock) -> None:
    breaker = make()
    fail(breaker, 2)
    breaker.record_success()  # resets the count: failures must be consecutive
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2
    fail(breaker, 1, "HTTP 503")
    assert state(breaker) is BreakerState.OPEN
    assert breaker.admit() is Admission.DENY
    status = breaker.status()
    assert status.state is BreakerState.OPEN
    assert status.last_error == "HTTP 503"
    assert status.retry_in_s == pytest.approx(30.0)
    assert status.changed_at == pytest.approx(1000.0 + trio.current_time())
    assert status.last_failure_at == status.changed_at


async def test_cool_down_then_exactly_one_probe(autojump_clock: MockClock) -> None:
    breaker = make()
    fail(breaker, 3)
    await trio.sleep(29.9)
    assert breaker.admit() is Admission.DENY
    await trio.sleep(0.1)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.status().retry_in_s == 0
    assert breaker.admit() is Admission.PROBE
    assert breaker.admit() is Admission.DENY  # the probe is in flight
    assert breaker.admit() is Admission.DENY
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.admit() is Admission.ALLOW


async def test_failed_probe_reopens_with_a_longer_cool_down(autojump_clock: MockClock) -> None:
    breaker = make()
    fail(breaker, 3)
    for cooldown in (60.0, 100.0, 100.0):  # doubled, capped at max_cooldown_s
        await trio.sleep(breaker.status().retry_in_s or 0)
        assert breaker.admit() is Admission.PROBE
        breaker.record_failure("still down")
        assert state(breaker) is BreakerState.OPEN
        assert breaker.status().retry_in_s == pytest.approx(cooldown)
    await trio.sleep(100)
    assert breaker.admit() is Admission.PROBE
    breaker.record_success()
    # Closed again with the base cool-down for the next opening.
    fail(breaker, 3)
    assert breaker.status().retry_in_s == pytest.approx(30.0)


async def test_abandoned_probe_frees_the_slot(autojump_clock: MockClock) -> None:
    breaker = make()
    fail(breaker, 3)
    await trio.sleep(30)
    assert breaker.admit() is Admission.PROBE
    breaker.release()  # e.g. the caller was cancelled
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.admit() is Admission.PROBE


async def test_jitter_lengthens_the_cool_down_within_bounds(autojump_clock: MockClock) -> None:
    breaker = CircuitBreaker("beta", failure_threshold=1, cooldown_s=30, jitter=0.5,
                             rng=lambda: 1.0)
    fail(breaker, 1)
    assert breaker.status().retry_in_s == pytest.approx(45.0)


async def test_manual_reset(autojump_clock: MockClock) -> None:
    breaker = make()
    fail(breaker, 3)
    breaker.reset()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.admit() is Admission.ALLOW


async def test_transitions_are_logged(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make()
    with caplog.at_level(logging.INFO, logger="orrad.federation.breaker"):
        fail(breaker, 3, "HTTP 503")
        await trio.sleep(30)
        assert breaker.admit() is Admission.PROBE
        breaker.record_success()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (logging.WARNING, "peer beta: circuit open for 30.0s (3 consecutive failures, "
                          "last: HTTP 503)"),
        (logging.INFO, "peer beta: circuit half-open; probing"),
        (logging.INFO, "peer beta: circuit closed"),
    ]


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker("x", cooldown_s=10, max_cooldown_s=5)
