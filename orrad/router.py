"""From inbound message to reply: agent selection and per-namespace lanes.

Every namespace has a lane: its messages run one at a time, in the order they were
submitted. Lanes run concurrently, at most ``max_concurrency`` messages at once across all
namespaces, so one slow conversation never delays another. A lane exists only while it has
work. This is also where federation will hand a message to the namespace's owner.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from orrad.channels.base import ReplyTarget, describe_error, no_typing
from orrad.errors import (
    ChannelError,
    MaxTurnsExceeded,
    OrradError,
    ProviderError,
    StoreError,
    UnknownAgent,
)
from orrad.metrics import METRICS
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from orrad.runtime.loop import Runtime

__all__ = ["AgentSet", "Reply", "Router", "error_code"]

log = logging.getLogger(__name__)

Reply = OutboundMessage | OutboundError


@dataclass
class AgentSet:
    """The agents a daemon runs, by lower-case name, and the one used when none is chosen.

    Replaced as a whole on reload; a message picks its runtime when it starts to run.
    """

    runtimes: dict[str, Runtime]
    default: str

    def __post_init__(self) -> None:
        self.runtimes = {name.lower(): rt for name, rt in self.runtimes.items()}
        self.default = self.default.lower()

    def resolve(self, name: str | None) -> Runtime:
        key = (name or self.default).lower()
        runtime = self.runtimes.get(key)
        if runtime is None:
            raise UnknownAgent(name or self.default, sorted(self.runtimes))
        return runtime

    def names(self) -> list[str]:
        return list(self.runtimes)


def error_code(exc: BaseException) -> str:
    """The stable code a failed run is reported with (CONTRACT §4 error shape)."""
    if isinstance(exc, UnknownAgent):
        return "unknown_agent"
    if isinstance(exc, ProviderError):
        return "provider_error"
    if isinstance(exc, StoreError):
        return "unavailable"
    if isinstance(exc, MaxTurnsExceeded):
        return "max_turns_exceeded"
    return "agent_error" if isinstance(exc, OrradError) else "internal"


def chosen_agent(inbound: InboundMessage, channel_agent: str | None) -> str | None:
    """Metadata ``agent`` wins, then the channel's ``agent``; ``None`` means the default."""
    explicit = inbound.metadata.get("agent")
    if isinstance(explicit, str) and explicit:
        return explicit
    return channel_agent


@dataclass
class _Job:
    inbound: InboundMessage
    target: ReplyTarget
    agent: str | None


@dataclass
class _Lane:
    jobs: deque[_Job] = field(default_factory=deque)


@asynccontextmanager
async def best_effort_typing(target: ReplyTarget, metadata: Mapping[str, Any]
                             ) -> AsyncIterator[None]:
    """The target's typing indicator, if it works: a failing indicator (a platform hiccup, a
    plugin bug) is logged and never fails or delays the run it decorates."""
    try:
        manager = target.start_typing(metadata)
        await manager.__aenter__()
    except Exception as exc:
        log.warning("typing indicator failed: %s: %s", type(exc).__name__, exc)
        yield
        return
    try:
        yield
    except BaseException as exc:
        await _exit_typing(manager, exc)
        raise
    else:
        await _exit_typing(manager, None)


async def _exit_typing(manager: AbstractAsyncContextManager[None],
                       exc: BaseException | None) -> None:
    try:
        await manager.__aexit__(type(exc) if exc else None, exc,
                                exc.__traceback__ if exc else None)
    except Exception as error:
        log.warning("typing indicator failed to stop: %s: %s", type(error).__name__, error)


class _Waiter:
    """A reply target that hands the reply to one awaiting caller (:meth:`Router.call`)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None

    async def send(self, response: OutboundMessage) -> None:
        self.reply = response
        self.done.set()

    async def send_error(self, error: OutboundError) -> None:
        self.reply = error
        self.done.set()

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()


class Router:
    """Runs submitted messages through the right agent and answers the reply target.

    Start it with ``await nursery.start(router.serve)``; lanes run in its nursery.
    ``submit`` returns as soon as the message is queued (it waits only when ``max_pending``
    messages are already queued); ``call`` waits for the reply.
    """

    def __init__(
        self, agents: AgentSet, *, max_concurrency: int = 64, max_pending: int = 10_000
    ) -> None:
        self.agents = agents
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._room = trio.Semaphore(max_pending)
        self._lanes: dict[str, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Messages submitted and not yet answered."""
        return self._pending

    @property
    def running(self) -> int:
        return int(self._limiter.borrowed_tokens)

    def set_max_concurrency(self, value: int) -> None:
        self._limiter.total_tokens = value

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def submit(
        self, inbound: InboundMessage, target: ReplyTarget, *, channel_agent: str | None = None
    ) -> None:
        """Queue ``inbound`` on its namespace's lane; the reply goes to ``target``."""
        if self._nursery is None:
            raise RuntimeError("router is not serving")
        await self._room.acquire()
        job = _Job(inbound, target, chosen_agent(inbound, channel_agent))
        self._pending += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        key = inbound.namespace.key
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.jobs.append(job)
            self._nursery.start_soon(self._run_lane, key, lane)
        else:
            lane.jobs.append(job)

    async def call(self, inbound: InboundMessage, *, channel_agent: str | None = None) -> Reply:
        """Submit ``inbound`` and wait for its reply."""
        waiter = _Waiter()
        await self.submit(inbound, waiter, channel_agent=channel_agent)
        await waiter.done.wait()
        assert waiter.reply is not None
        return waiter.reply

    async def wait_idle(self) -> None:
        """Return once nothing is pending."""
        await self._idle.wait()

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs[0]
                try:
                    async with self._limiter:
                        reply = await self._run(job)
                    # Delivery is outside the limiter: a slow platform (or a callback
                    # backlog) must not hold run slots other namespaces need. The lane still
                    # waits for it, so replies of one namespace stay in order.
                    await self._deliver(job.target, reply)
                finally:
                    lane.jobs.popleft()
                    self._pending -= 1
                    self._room.release()
                    if self._pending == 0:
                        self._idle.set()
        finally:
            del self._lanes[key]

    async def _run(self, job: _Job) -> Reply:
        """Run the agent for ``job``; never raises (failures become an OutboundError)."""
        inbound = job.inbound
        started = trio.current_time()
        try:
            runtime = self.agents.resolve(job.agent)
            async with best_effort_typing(job.target, inbound.metadata):
                result = await runtime.run(inbound.namespace, inbound.message)
            METRICS.run_latency.observe(trio.current_time() - started, runtime.name)
        except Exception as exc:
            METRICS.run_errors.inc(error_code(exc))
            if isinstance(exc, OrradError):
                log.warning("run in %s failed: %s", inbound.namespace, exc)
            else:
                log.exception("run in %s crashed", inbound.namespace)
            return OutboundError(
                inbound.namespace, describe_error(exc), inbound.metadata, code=error_code(exc)
            )
        return OutboundMessage(inbound.namespace, result.final_message, result, inbound.metadata)

    async def _deliver(self, target: ReplyTarget, reply: Reply) -> None:
        try:
            if isinstance(reply, OutboundMessage):
                await target.send(reply)
            else:
                await target.send_error(reply)
        except ChannelError as exc:
            log.warning("reply to %s not delivered: %s", reply.namespace, exc)
        except Exception:
            log.exception("reply to %s not delivered", reply.namespace)
