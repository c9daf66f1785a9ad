"""A per-peer circuit breaker (Fowler/Nygard; reliability.md FED-11).

States and transitions::

    closed --(failure_threshold consecutive failures)--> open
    open --(cool-down elapsed; the next admit() is the one probe)--> half_open
    half_open --(the probe succeeds)--> closed      (cool-down back to its base)
    half_open --(the probe fails)--> open           (cool-down doubled, up to the max)

``admit()`` is asked before every attempt: in ``closed`` every attempt may go; in ``open``
none may until the cool-down has elapsed; then exactly one caller gets
:attr:`Admission.PROBE` and everyone else is refused until that probe's outcome is
recorded (``record_success``/``record_failure``) or it is abandoned (``release``, e.g. the
caller was cancelled). A success in ``closed`` resets the failure count.

Times come from ``clock`` (default ``trio.current_time``, so tests drive it with
``autojump_clock``); the status timestamps additionally come from ``wall_clock`` (unix
seconds). Every transition is logged (open as a warning, the rest as info).
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["Admission", "BreakerState", "BreakerStatus", "CircuitBreaker"]

logger = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(enum.Enum):
    """The answer of :meth:`CircuitBreaker.admit`."""

    ALLOW = "allow"
    """Closed: go ahead."""
    PROBE = "probe"
    """Half-open: this caller's attempt is the one probe; record its outcome."""
    DENY = "deny"
    """Open (or a probe is in flight): do not send anything."""


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A snapshot for ``/v1/status``; ``*_at`` are unix times."""

    state: BreakerState
    consecutive_failures: int
    last_error: str | None
    last_failure_at: float | None
    changed_at: float
    """When the breaker entered ``state``."""
    retry_in_s: float | None
    """While open: seconds until a probe is allowed (0 once it is)."""


class CircuitBreaker:
    """Per-peer breaker; see the module docstring for the semantics.

    Args:
        name: the peer's name, for log lines.
        failure_threshold: consecutive failures that open a closed breaker.
        cooldown_s: the first cool-down after opening.
        max_cooldown_s: cap of the doubling cool-down after failed probes.
        jitter: each cool-down is multiplied by a random factor in ``[1, 1 + jitter]``.
        clock: monotonic seconds (trio's clock by default).
        wall_clock: unix seconds for the status timestamps.
        rng: ``random.random``-like source for the jitter.
    """

    def __init__(
        self, name: str, *, failure_threshold: int = 5, cooldown_s: float = 30.0,
        max_cooldown_s: float = 300.0, jitter: float = 0.1,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s < 0 or max_cooldown_s < cooldown_s or jitter < 0:
            raise ValueError("need 0 <= cooldown_s <= max_cooldown_s and jitter >= 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.jitter = jitter
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._next_cooldown = cooldown_s
        self._retry_at = 0.0  # clock time a probe is allowed, while open
        self._probing = False
        self.last_error: str | None = None
        self.last_failure_at: float | None = None
        self.changed_at = self._wall()

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down elapsed reads ``half_open``."""
        if self._state is BreakerState.OPEN and self._clock() >= self._retry_at:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def admit(self) -> Admission:
        """May an attempt be made now? See :class:`Admission`."""
        if self._state is BreakerState.CLOSED:
            return Admission.ALLOW
        if self._state is BreakerState.OPEN:
            if self._clock() < self._retry_at:
                return Admission.DENY
            self._enter(BreakerState.HALF_OPEN)
            logger.info("peer %s: circuit half-open; probing", self.name)
        if self._probing:
            return Admission.DENY
        self._probing = True
        return Admission.PROBE

    def record_success(self) -> None:
        """The attempt reached the peer and it answered sensibly."""
        self._failures = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._next_cooldown = self.cooldown_s
            self._enter(BreakerState.CLOSED)
            logger.info("peer %s: circuit closed", self.name)

    def record_failure(self, error: str) -> None:
        """The attempt failed for a reason that says the peer is unhealthy."""
        self._failures += 1
        self.last_error = error
        self.last_failure_at = self._wall()
        probe_failed = self._probing or self._state is BreakerState.HALF_OPEN
        self._probing = False
        if probe_failed:
            self._next_cooldown = min(self._next_cooldown * 2, self.max_cooldown_s)
            self._open(f"probe failed: {error}")
        elif self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(f"{self._failures} consecutive failures, last: {error}")

    def release(self) -> None:
        """Abandon an admitted attempt without an outcome (e.g. it was cancelled): a probe
        slot becomes free again; nothing else changes."""
        self._probing = False

    def reset(self) -> None:
        """Manual reset: closed, no failures, base cool-down."""
        self._failures = 0
        self._probing = False
        self._next_cooldown = self.cooldown_s
        if self._state is not BreakerState.CLOSED:
            self._enter(BreakerState.CLOSED)
            logger.info("peer %s: circuit reset", self.name)

    def status(self) -> BreakerStatus:
        retry_in: float | None = None
        if self._state is BreakerState.OPEN:
            retry_in = max(0.0, self._retry_at - self._clock())
        return BreakerStatus(self.state, self._failures, self.last_error,
                             self.last_failure_at, self.changed_at, retry_in)

    def _open(self, why: str) -> None:
        cooldown = self._next_cooldown * (1 + self.jitter * self._rng())
        self._retry_at = self._clock() + cooldown
        self._enter(BreakerState.OPEN)
        logger.warning("peer %s: circuit open for %.1fs (%s)", self.name, cooldown, why)

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self.changed_at = self._wall()
