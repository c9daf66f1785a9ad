"""The channel manager: one supervised runner per channel file.

A runner starts its channel (``serve`` under ``nursery.start``), hands it to the message
pipeline (the ``intake`` callable the daemon wires in: the router's pump, which reads the
channel and delivers its replies; the supervisor is not in the message path), and when the
channel fails decides, OTP-style, whether to restart it: ``permanent``
always, ``transient`` only after an error, ``temporary`` never. Restarts wait a full-jitter
exponential backoff; more than ``max_restarts`` within ``window_s`` (or a
:class:`~orrad.errors.FatalChannelError`) leaves the channel ``failed``. A runner catches its
channel's exceptions itself, so one channel's crash never touches another.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from orrad.channels.base import Channel, ChannelContext
from orrad.config import ChannelConfig
from orrad.errors import ConfigErrors, FatalChannelError
from orrad.metrics import Metrics
from orrad.timefmt import utc_iso

__all__ = ["ChannelManager", "ChannelRunner", "ChannelState", "ChannelStatus", "FileResult",
           "Intake"]

log = logging.getLogger(__name__)

# A generation that stayed up this long resets the backoff attempt counter.
STABLE_AFTER_S = 60.0
DEFAULT_STOP_GRACE_S = 10.0


class ChannelState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"
    COMPLETED = "completed"
    REJECTED = "rejected"


FINAL_STATES = frozenset({ChannelState.FAILED, ChannelState.STOPPED, ChannelState.COMPLETED})


@dataclass
class ChannelStatus:
    """What ``/v1/status`` says about one channel file (CONTRACT §5)."""

    name: str
    kind: str
    file: str
    state: ChannelState
    generation: int = 0
    restarts: int = 0
    last_error: str | None = None
    since: str = field(default_factory=utc_iso)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "file": self.file,
            "state": str(self.state),
            "generation": self.generation,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "since": self.since,
        }


@dataclass
class FileResult:
    """The outcome of one file in a reload (CONTRACT §5 ``/v1/reload``)."""

    file: str
    # started | restarted | stopped | unchanged | rejected | removed (a rejected file that is
    # gone) | reloaded (the daemon file)
    result: str
    error: str | None = None
    note: str | None = None  # what else the operator should know (a key needing a restart)

    def to_json(self) -> dict[str, Any]:
        body = {"file": self.file, "result": self.result, "error": self.error}
        return body if self.note is None else {**body, "note": self.note}


def full_jitter(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """AWS full jitter: uniform(0, min(cap, initial * 2**attempt))."""
    return rng.uniform(0.0, min(cap, initial * (2.0**attempt)))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def root_cause(exc: Exception) -> Exception:
    """The channel's own error out of nursery exception groups; a fatal one wins."""
    leaves = [e for e in _leaves(exc) if isinstance(e, Exception)]
    for leaf in leaves:
        if isinstance(leaf, FatalChannelError):
            return leaf
    return leaves[0] if leaves else exc


ChannelFactory = Callable[[ChannelConfig, ChannelContext], Channel]
# Reads a started channel's messages into the pipeline; returns once ``receive()`` returned
# ``None`` and every message taken was answered.
Intake = Callable[[Channel, ChannelConfig], Awaitable[None]]


class ChannelRunner:
    """Supervises the channel of one file through all its generations.

    ``status`` is the live :class:`ChannelStatus`. ``first_attempt_done`` is set once the
    first start attempt has ended either way (running, backoff, failed or completed).
    """

    def __init__(
        self,
        file: str,
        config: ChannelConfig,
        factory: ChannelFactory,
        context: ChannelContext,
        intake: Intake,
        *,
        generation: int = 0,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.file = file
        self._on_change = on_change  # told of every state change (systemd STATUS=)
        self.metrics = metrics if metrics is not None else Metrics()
        self.config = config
        self.factory = factory
        self.context = context
        self.intake = intake
        self.rng = rng or random.Random()
        assert config.name is not None
        self.status = ChannelStatus(config.name, config.kind, file, ChannelState.STARTING,
                                    generation=generation)
        self.channel: Channel | None = None
        self.file_rejected = False
        self._early_connection: tuple[bool, str | None] | None = None
        context.connection_listener = self._connection_changed
        context.file = file
        self.first_attempt_done = trio.Event()
        self.finished = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self._restart_times: deque[float] = deque()
        self._attempt = 0

    @property
    def name(self) -> str:
        return self.status.name

    def _set_state(self, state: ChannelState, reason: str, delay: float | None = None) -> None:
        self.status.state = state
        self.status.since = utc_iso()
        if state is not ChannelState.STARTING:
            self.first_attempt_done.set()
        level = logging.WARNING if state in (ChannelState.BACKOFF, ChannelState.FAILED) else (
            logging.INFO
        )
        extra = f", next start in {delay:.1f}s" if delay is not None else ""
        log.log(level, "channel %s generation %d %s: %s%s", self.name, self.status.generation,
                state, reason, extra)
        if self._on_change is not None:
            self._on_change()

    async def run(self) -> None:
        """Supervise until the channel completes, fails for good, or :meth:`stop` is called."""
        restart = self.config.effective_restart()
        try:
            with self._cancel_scope:
                while True:
                    error = await self._run_generation()
                    if error is None:
                        if restart.policy != "permanent":
                            self._set_state(ChannelState.COMPLETED, "finished")
                            return
                        reason = "finished; restarting (permanent)"
                    elif isinstance(error, FatalChannelError):
                        self.status.last_error = str(error)
                        self._set_state(ChannelState.FAILED, f"fatal: {error}")
                        return
                    else:
                        self.status.last_error = f"{type(error).__name__}: {error}"
                        if restart.policy == "temporary":
                            self._set_state(ChannelState.FAILED, self.status.last_error)
                            return
                        reason = self.status.last_error
                    now = trio.current_time()
                    self._restart_times.append(now)
                    while self._restart_times and now - self._restart_times[0] > restart.window_s:
                        self._restart_times.popleft()
                    if len(self._restart_times) > restart.max_restarts:
                        self._set_state(
                            ChannelState.FAILED,
                            f"{reason}; more than {restart.max_restarts} restarts in "
                            f"{restart.window_s:g}s, giving up",
                        )
                        return
                    delay = full_jitter(self._attempt, restart.backoff_initial_s,
                                        restart.backoff_max_s, self.rng)
                    self._attempt += 1
                    self._set_state(ChannelState.BACKOFF, reason, delay)
                    await trio.sleep(delay)
                    self.status.restarts += 1
                    self.metrics.channel_restarts.labels(self.name).inc()
            # Cancelled by stop(): the scope swallowed the cancellation.
            if self.status.state not in FINAL_STATES:
                self._set_state(ChannelState.STOPPED, "stopped")
        finally:
            self.first_attempt_done.set()
            self.finished.set()

    async def _run_generation(self) -> BaseException | None:
        """One start of the channel; returns the error that ended it, or None on a clean end."""
        self.status.generation += 1
        self._early_connection = None
        self._set_state(ChannelState.STARTING, "starting")
        started_at = trio.current_time()
        try:
            channel = self.factory(self.config, self.context)
            self.channel = channel
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.serve)
                early, self._early_connection = self._early_connection, None
                if early is not None and not early[0]:
                    # Started without a connection (e.g. the platform is unreachable and the
                    # channel keeps retrying itself): not running.
                    self.status.last_error = early[1]
                    self._set_state(ChannelState.BACKOFF, f"connection down: {early[1]}")
                else:
                    self._set_state(ChannelState.RUNNING, "connected")
                # Returns once intake is over and every message taken is answered.
                await self.intake(channel, self.config)
            return None
        except Exception as exc:
            return root_cause(exc)
        finally:
            if trio.current_time() - started_at >= STABLE_AFTER_S:
                self._attempt = 0

    def _connection_changed(self, up: bool, reason: str | None) -> None:
        if self.status.state is ChannelState.STARTING:
            # Reported before (or while) ``started()`` takes effect: applied right after.
            self._early_connection = (up, reason)
            return
        if self.status.state not in (ChannelState.RUNNING, ChannelState.BACKOFF):
            return
        if up and self.status.state is ChannelState.BACKOFF:
            self._set_state(ChannelState.RUNNING, reason or "reconnected")
        elif not up and self.status.state is ChannelState.RUNNING:
            self.status.last_error = reason
            self._set_state(ChannelState.BACKOFF, f"connection down: {reason}")

    async def stop(self, grace_s: float, *, removed: bool = False) -> None:
        """Stop gracefully: the channel's ``aclose`` (if any) within ``grace_s``, then cancel.

        Cancellation lets the channel run its bounded, shielded cleanup.
        """
        aclose = getattr(self.channel, "aclose", None)
        try:
            if aclose is not None and not self.finished.is_set():
                # Most of the grace for the graceful part; the rest for cancelled cleanup.
                with trio.move_on_after(grace_s * 0.8):
                    await aclose(removed=removed)
        finally:
            self._cancel_scope.cancel()


def _same_config(a: ChannelConfig, b: ChannelConfig) -> bool:
    return type(a) is type(b) and msgspec.json.encode(a) == msgspec.json.encode(b)


class ChannelManager:
    """All channel runners of a daemon, keyed by file; applies reloads file by file."""

    def __init__(
        self,
        intake: Intake,
        factory: ChannelFactory,
        make_context: Callable[[ChannelConfig], ChannelContext],
        *,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.intake = intake
        self.metrics = metrics if metrics is not None else Metrics()
        self.factory = factory
        self.make_context = make_context
        self.stop_grace_s = stop_grace_s
        self.rng = rng
        self.runners: dict[str, ChannelRunner] = {}
        self.rejected: dict[str, ChannelStatus] = {}
        self._generations: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    @property
    def alive(self) -> bool:
        """True while the supervision nursery is open."""
        return self._nursery is not None

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _start_runner(self, file: str, config: ChannelConfig) -> ChannelRunner:
        assert self._nursery is not None, "manager is not serving"
        runner = ChannelRunner(
            file, config, self.factory, self.make_context(config), self.intake,
            generation=self._generations.get(file, 0), rng=self.rng, metrics=self.metrics,
            on_change=self._notify,
        )
        self.runners[file] = runner

        async def supervise() -> None:
            try:
                await runner.run()
            finally:
                self._generations[file] = runner.status.generation
                self._notify()

        self._nursery.start_soon(supervise, name=f"channel:{runner.name}")
        return runner

    async def _stop_runner(self, runner: ChannelRunner, *, removed: bool = False) -> None:
        with trio.move_on_after(self.stop_grace_s) as scope:
            await runner.stop(self.stop_grace_s, removed=removed)
            await runner.finished.wait()
        if scope.cancelled_caught:
            log.error("channel %s did not stop in %gs; abandoning it", runner.name,
                      self.stop_grace_s)
        self._generations[runner.file] = runner.status.generation

    async def apply(
        self, configs: Mapping[str, ChannelConfig], errors: Mapping[str, ConfigErrors]
    ) -> list[FileResult]:
        """Make the running channels match ``configs`` (by file); see CONTRACT §7 SIGHUP.

        Once :meth:`stop_all` began, nothing more is started (the results stop there).
        """
        results: list[FileResult] = []
        for file in sorted(set(self.runners) | set(self.rejected) | set(configs) | set(errors)):
            if self._closing:
                break
            results.append(await self._apply_file(file, configs.get(file), errors.get(file)))
        self._notify()
        return results

    async def _apply_file(
        self, file: str, config: ChannelConfig | None, error: ConfigErrors | None
    ) -> FileResult:
        runner = self.runners.get(file)
        if error is not None:
            message = str(error)
            if runner is None or runner.status.state in FINAL_STATES:
                name = file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                self.rejected[file] = ChannelStatus(name, "?", file, ChannelState.REJECTED,
                                                    last_error=message)
            else:
                # The last good version keeps running, but the file is still rejected
                # (``/readyz`` says so until a valid version is loaded).
                runner.status.last_error = message
                runner.file_rejected = True
            log.error("%s", message)
            return FileResult(file, "rejected", message)
        was_rejected = self.rejected.pop(file, None) is not None
        if runner is not None:
            runner.file_rejected = False
        if config is None or not config.enabled:
            if runner is None:
                # A rejected file that is gone (or now disabled) is no longer rejected.
                return FileResult(file, "removed" if was_rejected and config is None
                                  else "unchanged")
            del self.runners[file]
            await self._stop_runner(runner, removed=True)
            return FileResult(file, "stopped")
        if runner is None:
            self._start_runner(file, config)
            return FileResult(file, "started")
        if _same_config(runner.config, config) and runner.status.state is not ChannelState.FAILED:
            return FileResult(file, "unchanged")
        await self._stop_runner(runner)
        self._start_runner(file, config)
        return FileResult(file, "restarted")

    async def stop_all(self) -> None:
        """Stop every channel, last started first, each within the grace period."""
        self._closing = True
        for runner in reversed(list(self.runners.values())):
            await self._stop_runner(runner)

    def rejected_files(self) -> list[str]:
        """Files whose current version is invalid (running on a last good one, or not)."""
        return sorted([*self.rejected, *(f for f, r in self.runners.items() if r.file_rejected)])

    def statuses(self) -> list[ChannelStatus]:
        items = [r.status for r in self.runners.values()] + list(self.rejected.values())
        return sorted(items, key=lambda s: s.file)

    async def wait_first_attempts(self) -> None:
        for runner in list(self.runners.values()):
            await runner.first_attempt_done.wait()

    def only_completed_stdin(self, *, finishing: str | None = None) -> bool:
        """True when every channel is stdin and all reached end of input (CONTRACT §7);
        ``finishing`` names a channel to count as completed (one about to return)."""
        if not self.runners:
            return False
        return all(
            r.config.kind == "stdin"
            and (r.status.state is ChannelState.COMPLETED or r.name == finishing)
            for r in self.runners.values()
        )
