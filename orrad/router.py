"""The message pipeline: intake, the ledger, per-namespace lanes, runs and delivery.

Every message takes the same path, whatever channel it came from:

1. **Intake.** :meth:`Router.pump` reads a channel's ``receive()``. A message with a
   ``delivery_id`` is recorded in the :class:`~orrad.state.Ledger` first; the channel
   learns the outcome from the :class:`~orrad.model.Receipt` (new, a repeat with its
   stored answer, or not stored) and acknowledges only what is stored. The message takes
   its place in its namespace's lane at arrival, so recording (group-committed with
   other messages) never reorders a namespace.
2. **Run.** A lane runs one message at a time, in order; lanes run concurrently, at most
   ``max_concurrency`` runs at once. The agent is the message's metadata ``agent``, else
   the channel's, else the default. The run is keyed by the ledger id, so a re-run after a
   crash never leaves a second copy in the session. A new message may start to run once
   its row is written, before that row's commit; what the run writes is refused, and
   nothing is answered, if the commit fails.
3. **Delivery.** The answer is stored in the ledger (``answered``), then handed to the live
   generation of the channel that received the message, in order per namespace; it is
   ``delivered`` only once the channel confirms the send. A send that may work later
   (``ChannelSendError.retryable``) is tried again with backoff, also after the channel
   restarts; a refused one is ``failed``.

When a channel attaches, what an earlier process (or an earlier generation) left open for
it is finished first: received but unanswered messages run again (or, with
``rerun_interrupted: false``, get an ``interrupted`` error) and stored answers are
delivered again. A state store that cannot be written makes intake refuse messages (the
receipt carries the error) until a write succeeds again.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import trio

from orrad.config import ChannelConfig
from orrad.delivery import (
    Reply,
    ReplyTarget,
    StoredReply,
    best_effort_typing,
    describe_error,
    error_code,
    no_typing,
    stores_before_send,
)
from orrad.errors import ChannelSendError, OrradError, StoreError, UnknownAgent, UnsavedRun
from orrad.metrics import Metrics
from orrad.model import (
    InboundMessage,
    Message,
    Namespace,
    OutboundError,
    OutboundMessage,
    Receipt,
)
from orrad.runtime.loop import RunResult, Runtime
from orrad.state.db import Committed
from orrad.state.ledger import Key, Ledger, LedgerEntry, LedgerState
from orrad.sync import Changes, acquire, held

__all__ = ["INTERRUPTED", "AgentSet", "Ownership", "Relayer", "Reply", "Router", "chosen_agent",
           "error_code"]

log = logging.getLogger(__name__)

INTERRUPTED = "the daemon restarted before answering this message; please send it again"
DELIVERY_CONCURRENCY = 16  # sends in flight at once per channel
REDELIVER_INITIAL_S = 1.0
REDELIVER_MAX_S = 60.0
STORE_PROBE_S = 2.0

_message_decoder = msgspec.json.Decoder(Message)
_ENCODE = msgspec.json.Encoder().encode


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


def chosen_agent(inbound: InboundMessage, channel_agent: str | None) -> str | None:
    """Metadata ``agent`` wins, then the channel's ``agent``; ``None`` means the default."""
    explicit = inbound.metadata.get("agent")
    if isinstance(explicit, str) and explicit:
        return explicit
    return channel_agent


@dataclass(frozen=True)
class Ownership:
    """Where a message runs: ``peer`` (``None``: here) and the agent named there (``None``:
    that daemon's choice)."""

    peer: str | None
    agent: str | None = None


class Relayer(Protocol):
    """Federation as the router sees it (implemented by :mod:`orrad.peering`)."""

    def owner(self, namespace: Namespace, agent: str | None) -> Ownership:
        """Who answers a message for ``namespace`` with the user's explicit ``agent``
        choice (``name``, ``name@peer`` or ``None``). Raises an :class:`OrradError` with
        a ``code`` for a choice that names no known peer."""
        ...

    def would_queue(self, namespace: Namespace, agent: str | None) -> bool:
        """True when such a message would wait for an unavailable peer right now."""
        ...

    async def relay(self, peer: str, txn_id: str, inbound: InboundMessage, agent: str | None,
                    received_at: float, on_queued: Callable[[], None]) -> Reply | None:
        """The owner's answer (an :class:`OutboundError` for its refusal or when it cannot
        be reached), after waiting for it when the peer queues; ``None``: answer here
        (``on_unavailable: local``). ``on_queued`` is called once when the message starts
        waiting for the peer."""
        ...


class _Source:
    """One origin of messages (a channel by name, ``api``...) across its generations."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.target: ReplyTarget | None = None
        self.attached = trio.Event()
        self.in_flight = 0
        self.changed = Changes()
        self.sends = trio.Semaphore(DELIVERY_CONCURRENCY)

    def attach(self, target: ReplyTarget) -> None:
        self.target = target
        self.attached.set()

    def detach(self, target: ReplyTarget) -> None:
        if self.target is target:
            self.target = None
            self.attached = trio.Event()

    async def live_target(self) -> ReplyTarget:
        while self.target is None:
            await self.attached.wait()
        return self.target

    async def wait_idle(self) -> None:
        while self.in_flight:
            await self.changed.wait()


@dataclass
class _Job:
    inbound: InboundMessage
    source: _Source
    agent: str | None
    target: ReplyTarget | None = None  # None: the source's live channel
    ledger_id: int | None = None
    recorded: trio.Event | None = None  # set once the ledger answered; None: nothing to wait
    skip: bool = False  # a repeat, or not recorded: nothing to run
    reply: Reply | None = None
    unstored: StoredReply | None = None  # the answer, when it is stored with the outcome
    keep_open: bool = False  # not an answer (the store failed): leave the entry received
    unsaved: bool = False  # the run's answer is not in the session (the store failed)
    first_attempt: bool = True  # false: it may have run before (recovery, a retry)
    queued_notice: bool = False  # its sender was told it waits for a peer
    store_broke: bool = False  # the local run failed on this daemon's state store
    payload: bytes = b""  # the ledger's JSON of the message
    received_at: float = field(default_factory=time.time)
    # Run before its ledger row was committed (Router._run_early): the row's operation, and
    # an event set once the receipt went out.
    record: Committed | None = None
    receipted: trio.Event | None = None


@dataclass
class _Lane:
    jobs: deque[_Job] = field(default_factory=deque)
    queued_for: str | None = None  # the head waits for this unavailable peer


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

    def stores_before_send(self, reply: Reply) -> bool:
        return False


class Discard:
    """A reply target for a source whose askers cannot be reached any more (the API's
    callers after a restart): the answer stays in the session and the ledger."""

    async def send(self, response: OutboundMessage) -> None:
        return None

    async def send_error(self, error: OutboundError) -> None:
        return None

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()

    def stores_before_send(self, reply: Reply) -> bool:
        return False


class Router:
    """Runs every accepted message through the right agent and delivers the answer.

    Start it with ``await nursery.start(router.serve)``; lanes, recording and deliveries run
    in its nursery. Without a ``ledger`` nothing is recorded (messages are at most once).
    """

    def __init__(
        self, agents: AgentSet, *, ledger: Ledger | None = None, max_concurrency: int = 64,
        max_pending: int = 10_000, rerun_interrupted: bool = True,
        redeliver_initial_s: float = REDELIVER_INITIAL_S,
        redeliver_max_s: float = REDELIVER_MAX_S, relayer: Relayer | None = None,
        instance: str = "orrad", metrics: Metrics | None = None,
    ) -> None:
        self.agents = agents
        self.ledger = ledger
        self.metrics = metrics if metrics is not None else Metrics()
        self.relayer = relayer
        self.instance = instance
        self.rerun_interrupted = rerun_interrupted
        self.redeliver_initial_s = redeliver_initial_s
        self.redeliver_max_s = redeliver_max_s
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._room = trio.Semaphore(max_pending)
        self._lanes: dict[str, _Lane] = {}
        self._deliveries: dict[tuple[str, str], deque[_Job]] = {}
        self._sources: dict[str, _Source] = {}
        self._active: set[int] = set()  # ledger ids this process is running or delivering
        self._ended_watch: list[set[int]] = []  # recoveries reading the ledger right now
        self._nursery: trio.Nursery | None = None
        # Messages waiting to be recorded, and delivery outcomes waiting to be written: one
        # task each takes all that is waiting into one ledger operation.
        self._to_record: list[_Job] = []
        self._record_more = trio.Event()
        self._to_settle: list[tuple[_Job, LedgerState]] = []
        self._settle_more = trio.Event()
        self._pending = 0
        self._parked = 0  # deliveries waiting for their channel to attach
        self._settled_changed = Changes()
        self._idle = trio.Event()
        self._idle.set()
        self._epoch: str | None = None
        self.store_error: str | None = None
        self._store_back = trio.Event()  # set (and replaced) whenever writes work again

    # -- introspection -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages accepted and not yet delivered."""
        return self._pending

    @property
    def running(self) -> int:
        return int(self._limiter.borrowed_tokens)

    def set_max_concurrency(self, value: int) -> None:
        self._limiter.total_tokens = value

    async def wait_idle(self) -> None:
        """Return once nothing is pending."""
        await self._idle.wait()

    async def wait_settled(self) -> None:
        """Return once nothing is pending but deliveries waiting for a channel that is not
        attached (at shutdown: every run has finished and every answer that can be
        delivered now was; the rest stay in the ledger)."""
        # Messages queued for an unavailable peer are in the ledger: they wait there too.
        while self._pending > self._parked + self._queued_total():
            await self._settled_changed.wait()

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.ledger is not None:
                self._epoch = await self.ledger.epoch()
                nursery.start_soon(self._recorder, self.ledger)
                nursery.start_soon(self._settler, self.ledger)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("router is not serving")
        return self._nursery

    def _source(self, name: str) -> _Source:
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = _Source(name)
        return source

    # -- intake --------------------------------------------------------------------------

    async def pump(self, channel: Any, *, source: str, agent: str | None = None) -> None:
        """Take ``channel``'s messages until ``receive()`` returns ``None`` and every one
        of them is delivered; replies of this source go to ``channel`` meanwhile.

        What the ledger holds open for ``source`` is taken up first (module docstring).
        """
        src = self._source(source)
        src.attach(channel)
        try:
            await self._recover(src)
            # A channel that can hand its messages over in its own task (BaseChannel's
            # ``take_directly``) saves two task switches per message; ``receive()`` still
            # brings whatever waits when there is no room (and what came in during the
            # recovery), and the end of intake.
            take_directly = getattr(channel, "take_directly", None)
            if take_directly is not None:
                take_directly(lambda inbound: self._take_now(src, inbound, agent))
            try:
                while (inbound := await channel.receive()) is not None:
                    self.metrics.child(self.metrics.messages_in, source).inc()
                    await self._intake(src, inbound, agent)
            finally:
                if take_directly is not None:
                    take_directly(None)
            await src.wait_idle()
        finally:
            src.detach(channel)

    def _take_now(self, src: _Source, inbound: InboundMessage, agent: str | None) -> bool:
        """Take ``inbound`` when a pending slot is free (True), without yielding."""
        self._require_nursery()
        try:
            self._room.acquire_nowait()
        except trio.WouldBlock:
            return False
        self.metrics.child(self.metrics.messages_in, src.name).inc()
        self._take(src, inbound, agent, None)
        return True

    async def intake(self, channel: Any, config: ChannelConfig) -> None:
        """The supervisor's ``Intake``: :meth:`pump` a started channel under its name,
        with its ``agent``."""
        assert config.name is not None
        await self.pump(channel, source=config.name, agent=config.agent)

    async def attach(self, source: str, target: ReplyTarget) -> None:
        """Make ``target`` the reply target of ``source`` for good (the daemon API), after
        finishing what the ledger holds open for it."""
        src = self._source(source)
        src.attach(target)
        await self._recover(src)

    async def submit(
        self, inbound: InboundMessage, target: ReplyTarget, *, channel_agent: str | None = None,
        source: str = "direct",
    ) -> None:
        """Queue ``inbound`` on its namespace's lane; the reply goes to ``target``.

        Recorded in the ledger (and so answered once) when it has a ``delivery_id``;
        returns as soon as it is queued (waiting only while ``max_pending`` are).
        """
        await self._intake(self._source(source), inbound, channel_agent, target)

    async def call(self, inbound: InboundMessage, *, channel_agent: str | None = None,
                   source: str = "direct") -> Reply:
        """Submit ``inbound`` and wait for its reply.

        Raises :class:`~orrad.errors.StoreError` when the message has a ``delivery_id``
        and could not be recorded; a repeated ``delivery_id`` returns the stored answer
        (an ``in_progress`` error while it is still running).
        """
        receipts: list[Receipt] = []
        recorded = trio.Event()

        def on_recorded(receipt: Receipt) -> None:
            receipts.append(receipt)
            recorded.set()

        inbound.on_recorded = on_recorded
        waiter = _Waiter()
        await self.submit(inbound, waiter, channel_agent=channel_agent, source=source)
        await recorded.wait()
        receipt = receipts[0]
        if receipt.error is not None:
            raise receipt.error
        if not receipt.new:
            if receipt.reply is not None:
                return receipt.reply
            return OutboundError(inbound.namespace, "the message is still being answered",
                                 inbound.metadata, code="in_progress")
        await waiter.done.wait()
        assert waiter.reply is not None
        return waiter.reply

    async def stored_answer(self, source: str, delivery_id: str) -> Reply | None:
        """The answer the ledger holds for ``(source, delivery_id)`` (``None`` while there
        is none); reads only, so waiting for a running message costs no pipeline slot."""
        if self.ledger is None:
            return None
        entry = await self.ledger.get(source, delivery_id)
        return None if entry is None else _stored(entry)

    async def _intake(self, src: _Source, inbound: InboundMessage, agent: str | None,
                      target: ReplyTarget | None = None) -> None:
        self._require_nursery()
        await acquire(self._room)
        self._take(src, inbound, agent, target)

    def _take(self, src: _Source, inbound: InboundMessage, agent: str | None,
              target: ReplyTarget | None) -> None:
        """Queue ``inbound`` (holding a pending slot) and have it recorded."""
        job = _Job(inbound, src, chosen_agent(inbound, agent), target)
        self._begin(job)
        if self.ledger is not None and inbound.delivery_id is not None:
            job.recorded = trio.Event()
            self._to_record.append(job)
            self._record_more.set()
        else:
            _notify(inbound, Receipt(True))
        self._enqueue(job)

    async def _recorder(self, ledger: Ledger) -> None:
        """Record waiting messages, all that wait in one operation, and hand out their
        receipts."""
        while True:
            await self._record_more.wait()
            self._record_more = trio.Event()
            batch, self._to_record = self._to_record, []
            batch = [job for job in batch if self._encodable(job)]
            if not batch:
                continue
            try:
                # A caller waiting here (Router.call) learns of its message only from the
                # answer, which it gets after the session's durable commit: its row needs
                # no fsync of its own. A channel may acknowledge on the receipt.
                results = await ledger.record_many([
                    (job.source.name, job.inbound.delivery_id or "",
                     job.inbound.namespace.key, job.payload) for job in batch],
                    durable=not all(isinstance(job.target, _Waiter) for job in batch),
                    on_executed=functools.partial(self._run_early, batch))
            except StoreError as exc:
                self._store_failed(exc)
                for job in batch:
                    job.skip = True
                    self._recorded(job, Receipt(False, error=exc))
                continue
            except BaseException:
                for job in batch:  # cancelled (shutdown): nothing recorded, nothing said
                    job.skip = True
                    assert job.recorded is not None
                    job.recorded.set()
                    if job.receipted is not None:
                        job.receipted.set()
                raise
            self._store_ok()
            for job, (new, entry) in zip(batch, results, strict=True):
                if job.record is not None:  # running already
                    self._recorded(job, Receipt(True, str(entry.id), queued=job.queued_notice))
                elif new or (entry.state == "received" and entry.id not in self._active):
                    # New, or accepted before and not being answered here (its run failed
                    # on the store, or it waits for a recovery not yet done): run it now.
                    self._admit(job, entry, new=new)
                    self._recorded(job, Receipt(True, str(entry.id), queued=job.queued_notice))
                else:
                    job.skip = True
                    self._recorded(job, Receipt(False, str(entry.id), entry.state,
                                                _stored(entry)))

    def _run_early(self, batch: list[_Job], results: list[tuple[bool, LedgerEntry]],
                   record: Committed) -> None:
        """New messages may run once their rows are written, before the commit (one commit
        less to wait for). Their runs' writes are made only if the rows commit
        (``Ledger.after``, in :meth:`_run_here`; a session store on another database, or in
        memory, is not held back), a relay waits for the receipt, and so does the answer
        (:meth:`_run_until_stored`): a row that does not commit leaves nothing answered.
        Repeats wait for the commit, as before."""
        for job, (new, entry) in zip(batch, results, strict=True):
            if not new:
                continue
            self._admit(job, entry, new=True)
            job.record = record
            job.receipted = trio.Event()
            assert job.recorded is not None
            job.recorded.set()

    def _admit(self, job: _Job, entry: LedgerEntry, *, new: bool) -> None:
        """``job`` runs as ledger entry ``entry`` (``new``: it never ran before)."""
        job.first_attempt = new
        job.ledger_id = entry.id
        self._active.add(entry.id)
        job.queued_notice = self._would_queue(job)

    def _encodable(self, job: _Job) -> bool:
        """Encode the job's ledger payload; a message that cannot be encoded (a plugin's
        metadata holding objects JSON cannot carry) is refused alone."""
        try:
            job.payload = _ENCODE({
                "message": job.inbound.message,
                "metadata": job.inbound.metadata,
                "reply_to": job.inbound.reply_to,
                "agent": job.agent,
                "hops": job.inbound.hops,
            })
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            log.error("%s: message %s cannot be recorded: %s", job.source.name,
                      job.inbound.delivery_id, exc)
            job.skip = True
            self._recorded(job, Receipt(False, error=OrradError(
                f"the message cannot be recorded: {exc}")))
            return False
        return True

    def _would_queue(self, job: _Job) -> bool:
        """Whether the message will wait for an unavailable peer (known now)."""
        if self.relayer is None:
            return False
        lane = self._lanes.get(job.inbound.namespace.key)
        if lane is not None and lane.queued_for is not None:
            return True
        try:
            return self.relayer.would_queue(job.inbound.namespace, _explicit_agent(job.inbound))
        except OrradError:
            return False

    def _recorded(self, job: _Job, receipt: Receipt) -> None:
        assert job.recorded is not None
        job.recorded.set()
        if job.skip:
            self._drop(job)
        _notify(job.inbound, receipt)
        if job.receipted is not None:
            job.receipted.set()

    async def _until_receipted(self, job: _Job) -> None:
        """A message that runs before its row is committed: wait until its receipt went
        out (the commit's outcome is then known, and its sender heard it first)."""
        if job.receipted is not None and not job.receipted.is_set():
            await job.receipted.wait()

    def _drop(self, job: _Job) -> None:
        """A job with nothing to run leaves its lane at once (unless the lane's runner
        already holds it), so repeats never wait behind a long run holding a slot."""
        lane = self._lanes.get(job.inbound.namespace.key)
        if lane is None or not lane.jobs or lane.jobs[0] is job:
            return
        try:
            lane.jobs.remove(job)
        except ValueError:
            return
        self._end(job)

    def _begin(self, job: _Job) -> None:
        self._pending += 1
        job.source.in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _changed(self) -> None:
        self._settled_changed.changed()

    def _end(self, job: _Job) -> None:
        self._changed()
        self._pending -= 1
        self._room.release()
        if job.ledger_id is not None:
            self._active.discard(job.ledger_id)
            for ended in self._ended_watch:
                ended.add(job.ledger_id)
        src = job.source
        src.in_flight -= 1
        src.changed.changed()
        if self._pending == 0:
            self._idle.set()

    # -- recovery ------------------------------------------------------------------------

    async def _recover(self, src: _Source) -> None:
        if self.ledger is None:
            return
        # Ids that end while the read is in flight were open when read, and are done now.
        ended: set[int] = set()
        self._ended_watch.append(ended)
        try:
            entries = await self.ledger.open_entries(src.name)
        except StoreError as exc:
            self._store_failed(exc)
            self._require_nursery().start_soon(self._recover_later, src)
            return
        finally:
            self._ended_watch.remove(ended)
        for entry in entries:
            if entry.id in self._active or entry.id in ended:
                continue  # an earlier generation in this process is (or was just) on it
            inbound = _inbound_of(entry)
            if inbound is None:
                log.error("%s: ledger entry %s is unreadable; dropping it", src.name,
                          entry.delivery_id)
                await self._mark_once((entry.source, entry.delivery_id), "failed")
                continue
            self._active.add(entry.id)
            await acquire(self._room)
            agent = entry.payload.get("agent")
            job = _Job(inbound, src, agent if isinstance(agent, str) else None,
                       ledger_id=entry.id, first_attempt=False, received_at=entry.created_at)
            self._begin(job)
            stored = _stored(entry)
            if entry.state == "answered" and stored is not None:
                log.info("%s: delivering the stored answer to %s again", src.name,
                         entry.delivery_id)
                job.reply = stored
                self._queue_delivery(job)
            elif self.rerun_interrupted:
                log.info("%s: answering %s, accepted before a restart", src.name,
                         entry.delivery_id)
                self._enqueue(job)
            else:
                log.info("%s: %s was accepted before a restart and not answered; telling "
                         "the sender (rerun_interrupted is false)", src.name,
                         entry.delivery_id)
                await self._answered(job, OutboundError(
                    inbound.namespace, INTERRUPTED, inbound.metadata, code="interrupted"))

    async def _recover_later(self, src: _Source) -> None:
        """Recovery the store refused: done once it can be written again."""
        await self._store_writable()
        log.info("%s: finishing what the ledger holds open, now that the store works",
                 src.name)
        await self._recover(src)

    # -- lanes and runs ------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        key = job.inbound.namespace.key
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.jobs.append(job)
            self._require_nursery().start_soon(self._run_lane, key, lane)
        else:
            lane.jobs.append(job)
            if lane.queued_for is not None:
                self._queued(job)  # behind a message that waits for its peer
                self._changed()

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs[0]
                handed_on = False
                try:
                    if job.recorded is not None:
                        await job.recorded.wait()
                    reply = None if job.skip else await self._run_until_stored(job)
                    # (None: not to be run; or it ran early and its row did not commit after
                    # all: its sender was told so, and nothing of it was stored.)
                    if reply is not None:
                        # From here on _answered ends the job. Delivery is not in the lane
                        # (but for a caller waiting in this process): a slow platform must
                        # not hold the namespace's next run, nor run slots others need.
                        handed_on = True
                        await self._answered(job, reply)
                finally:
                    lane.jobs.popleft()
                    if not handed_on:
                        self._end(job)
        finally:
            del self._lanes[key]

    async def _run_until_stored(self, job: _Job) -> Reply | None:
        """Run ``job``; a run the state store broke is not an answer (``None``: a run
        started before its ledger row committed, which then did not).

        A caller waiting in this process is told (503 ``unavailable``) and the message
        stays ``received``, so a retry with the same id runs it again; a message whose
        answer goes to a platform or a callback runs again once the store can be written.
        """
        while True:
            job.unsaved = job.store_broke = False
            # The run limiter is taken by the local run only: a relay waiting for its peer
            # (a queue of an hour) must not hold run slots local namespaces need.
            reply = await self._run(job)
            await self._until_receipted(job)
            if job.skip:
                return None  # it ran early and its row did not commit: its writes were refused
            reply.delivery_id = job.inbound.delivery_id
            reply.reply_to = job.inbound.reply_to
            # Only this daemon's own store decides: a peer's "unavailable" is an answer.
            store_failed = job.unsaved or job.store_broke
            if not store_failed or job.ledger_id is None:
                return reply
            target = job.target or job.source.target
            if target is not None and not stores_before_send(target, reply):
                job.keep_open = True
                if job.unsaved and isinstance(reply, OutboundMessage):
                    # Never a 2xx whose exchange is not stored (reliability DUR-5): the
                    # caller asks again, and the message, still received, runs again.
                    return _failed(job.inbound, StoreError("the answer could not be saved"),
                                   self.metrics)
                return reply
            log.warning("%s: the run for %s could not be stored; running it again once the "
                        "state store can be written", job.source.name, job.inbound.namespace)
            job.first_attempt = False
            await self._store_writable()

    async def _store_writable(self) -> None:
        if self.store_error is None:
            self._store_failed(StoreError("a run could not be saved"))
        while self.store_error is not None:
            await self._store_back.wait()

    async def _run(self, job: _Job) -> Reply:
        """Answer ``job`` here or through the namespace's owner; never raises (failures
        become an OutboundError)."""
        inbound = job.inbound
        target = job.target or job.source.target
        typing = (best_effort_typing(target, inbound.metadata) if target is not None
                  else no_typing())
        async with typing:
            agent = job.agent
            if self.relayer is not None:
                explicit = _explicit_agent(inbound)
                try:
                    owner = self.relayer.owner(inbound.namespace, explicit)
                except OrradError as exc:
                    return _failed(inbound, exc, self.metrics)
                if owner.peer is not None:
                    peer = owner.peer
                    # The peer records the relay under this message's ledger id: only a
                    # committed one.
                    await self._until_receipted(job)
                    if job.skip:
                        return _failed(inbound, StoreError("the message was not recorded"),
                                       self.metrics)
                    try:
                        reply = await self.relayer.relay(
                            peer, self._txn_id(job), inbound, owner.agent, job.received_at,
                            lambda: self._lane_queued(job, peer))
                    except Exception as exc:  # a bug in relaying must not kill the router
                        return _failed(inbound, exc, self.metrics)
                    finally:
                        self._lane_unqueued(job)
                    if reply is not None:
                        return reply
                if explicit is not None:
                    agent = owner.agent
            return await self._run_here(job, agent)

    def _txn_id(self, job: _Job) -> str:
        """Stable across restarts of this daemon (the ledger id), so a relay retried after
        a crash is recognised by the peer."""
        if job.ledger_id is None or self._epoch is None:
            return f"{self.instance}:{uuid.uuid4()}"
        # The database's epoch: a daemon whose state was reset (or restored) starts ids
        # again, and must never reuse a txn id a peer has answered before.
        return f"{self.instance}:{self._epoch}:{job.ledger_id}"

    def _lane_queued(self, job: _Job, peer: str) -> None:
        """The head of ``job``'s lane waits for ``peer``: it and everything behind it are
        queued (their senders are told so)."""
        lane = self._lanes.get(job.inbound.namespace.key)
        if lane is None:
            return
        lane.queued_for = peer
        for waiting in lane.jobs:
            self._queued(waiting)
        self._changed()

    def _lane_unqueued(self, job: _Job) -> None:
        lane = self._lanes.get(job.inbound.namespace.key)
        if lane is not None and lane.queued_for is not None:
            lane.queued_for = None
            self._changed()

    def queued_for(self, peer: str) -> int:
        """Messages waiting for ``peer`` to answer again (``on_unavailable: queue``)."""
        return sum(len(lane.jobs) for lane in self._lanes.values() if lane.queued_for == peer)

    def _queued_total(self) -> int:
        return sum(len(lane.jobs) for lane in self._lanes.values()
                   if lane.queued_for is not None)

    def _queued(self, job: _Job) -> None:
        if job.queued_notice:
            return
        job.queued_notice = True
        target = job.target or job.source.target
        hook = getattr(target, "queued", None)
        if hook is not None:
            try:
                hook(job.inbound)
            except Exception:
                log.exception("%s: queued notice failed", job.source.name)

    async def _run_here(self, job: _Job, agent: str | None) -> Reply:
        inbound = job.inbound
        started = trio.current_time()
        try:
            runtime = self.agents.resolve(agent)
            async with held(self._limiter):
                with self._only_if_recorded(job):
                    result = await runtime.run(
                        inbound.namespace, inbound.message,
                        run_id=None if job.ledger_id is None else str(job.ledger_id),
                        first_attempt=job.first_attempt)
            self.metrics.child(self.metrics.run_latency, runtime.name).observe(
                trio.current_time() - started)
        except UnsavedRun as exc:
            log.warning("run in %s answered but its session could not be saved: %s",
                        inbound.namespace, exc)
            self._store_failed(exc)
            job.unsaved = True
            if not isinstance(exc.result, RunResult):
                raise
            result = exc.result
        except Exception as exc:
            if isinstance(exc, StoreError):
                job.store_broke = True
                self._store_failed(exc)
            return _failed(inbound, exc, self.metrics)
        return OutboundMessage(inbound.namespace, result.final_message, result.summary(),
                               inbound.metadata)

    def _only_if_recorded(self, job: _Job) -> AbstractContextManager[None]:
        """The run's writes (its session) are refused if its ledger row did not commit."""
        if job.record is None or self.ledger is None or job.record.committed():
            return nullcontext()
        return self.ledger.after(job.record)

    async def _answered(self, job: _Job, reply: Reply) -> None:
        """Store the answer in the ledger, then deliver it; from here on the job is
        ended by its delivery (or here, when this is cancelled before handing it on).

        What is delivered is rebuilt from the stored form, so a delivery repeated after a
        restart renders exactly the same reply. An answer that cannot be stored is still
        delivered (a waiting client gets it); the message then stays ``received``. When
        the target needs nothing stored before its send (``stores_before_send``: a caller
        waiting in this process), the answer is written together with the delivery's
        outcome instead, and handed over at once when nothing of its namespace is ahead.
        """
        handed_on = False
        try:
            await self._store_answer(job, reply)
            handed_on = True
        finally:
            if not handed_on:
                self._end(job)
        key = (job.source.name, job.inbound.namespace.key)
        if job.unstored is not None and key not in self._deliveries:
            await self._deliver_and_settle(job)
        else:
            self._queue_delivery(job)

    async def _store_answer(self, job: _Job, reply: Reply) -> None:
        inbound = job.inbound
        if job.ledger_id is not None and self.ledger is not None and not job.keep_open:
            stored = StoredReply.of(reply)
            reply = stored.to_reply(inbound.namespace, inbound.metadata, inbound.reply_to,
                                    inbound.delivery_id)
            target = job.target or job.source.target
            if target is not None and not stores_before_send(target, reply):
                job.unstored = stored
            else:
                try:
                    await self.ledger.answer(_key(job), stored)
                except StoreError as exc:
                    self._store_failed(exc)
                else:
                    self._store_ok()
        reply.delivery_id = inbound.delivery_id
        reply.reply_to = inbound.reply_to
        job.reply = reply

    # -- delivery ------------------------------------------------------------------------

    def _queue_delivery(self, job: _Job) -> None:
        key = (job.source.name, job.inbound.namespace.key)
        queue = self._deliveries.get(key)
        if queue is None:
            queue = self._deliveries[key] = deque([job])
            self._require_nursery().start_soon(self._run_deliveries, key, queue)
        else:
            queue.append(job)

    async def _run_deliveries(self, key: tuple[str, str], queue: deque[_Job]) -> None:
        try:
            while queue:
                await self._deliver_and_settle(queue[0])
                queue.popleft()
        finally:
            del self._deliveries[key]

    async def _deliver_and_settle(self, job: _Job) -> None:
        """Deliver, then have the outcome written; the job ends once it is (or at once
        when cancelled)."""
        settled = False
        try:
            state = await self._deliver(job)
            self._settle(job, state)
            settled = True
        finally:
            if not settled:
                self._end(job)

    async def _deliver(self, job: _Job) -> LedgerState:
        reply, src = job.reply, job.source
        assert reply is not None
        delay = self.redeliver_initial_s
        while True:
            target = job.target or await self._live_target(src)
            try:
                async with held(src.sends):
                    if isinstance(reply, OutboundMessage):
                        await target.send(reply)
                    else:
                        await target.send_error(reply)
            except ChannelSendError as exc:
                if exc.retryable:
                    log.warning("%s: reply to %s not delivered (%s); trying again in %.0fs",
                                src.name, reply.namespace, exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.redeliver_max_s)
                    continue
                self.metrics.delivery_failures.labels(src.name).inc()
                log.warning("%s: reply to %s not delivered: %s", src.name, reply.namespace, exc)
                return "failed"
            except Exception:
                self.metrics.delivery_failures.labels(src.name).inc()
                log.exception("%s: reply to %s not delivered", src.name, reply.namespace)
                return "failed"
            outcome = "ok" if isinstance(reply, OutboundMessage) else "error"
            self.metrics.child(self.metrics.messages_out, src.name, outcome).inc()
            return "delivered"

    def _settle(self, job: _Job, state: LedgerState) -> None:
        """Have the delivery's outcome written (the job ends once it is)."""
        if job.ledger_id is None or self.ledger is None or job.keep_open:
            self._end(job)
            return
        self._to_settle.append((job, state))
        self._settle_more.set()

    async def _settler(self, ledger: Ledger) -> None:
        """Write waiting delivery outcomes, all in one operation; retry the write (never
        the send) while the store refuses it."""
        delay = self.redeliver_initial_s
        while True:
            await self._settle_more.wait()
            self._settle_more = trio.Event()
            batch, self._to_settle = self._to_settle, []
            try:
                await ledger.settle_many([(_key(job), state, job.unstored)
                                          for job, state in batch])
            except StoreError as exc:
                self._store_failed(exc)
                self._to_settle[:0] = batch
                await trio.sleep(delay)
                delay = min(delay * 2, self.redeliver_max_s)
                self._settle_more.set()
                continue
            delay = self.redeliver_initial_s
            self._store_ok()
            for job, _ in batch:
                self._end(job)

    async def _live_target(self, src: _Source) -> ReplyTarget:
        if src.target is not None:
            return src.target
        self._parked += 1
        self._changed()
        try:
            return await src.live_target()
        finally:
            self._parked -= 1

    async def _mark_once(self, key: Key, state: LedgerState) -> None:
        assert self.ledger is not None
        try:
            await self.ledger.mark(key, state)
        except StoreError as exc:
            self._store_failed(exc)

    # -- store health --------------------------------------------------------------------

    def _store_failed(self, exc: StoreError) -> None:
        if self.store_error is None:
            log.error("state store cannot be written (%s): refusing new messages until it "
                      "can be written again", exc)
            if self._nursery is not None and self.ledger is not None:
                self._nursery.start_soon(self._probe_store, self.ledger)
        self.store_error = str(exc)

    def _store_ok(self) -> None:
        if self.store_error is not None:
            self.store_error = None
            log.warning("state store can be written again: accepting messages")
            self._store_back.set()
            self._store_back = trio.Event()

    async def _probe_store(self, ledger: Ledger) -> None:
        while self.store_error is not None:
            await trio.sleep(STORE_PROBE_S)
            try:
                await ledger.probe()
            except StoreError:
                continue
            self._store_ok()


def _key(job: _Job) -> Key:
    assert job.inbound.delivery_id is not None
    return (job.source.name, job.inbound.delivery_id)


def _explicit_agent(inbound: InboundMessage) -> str | None:
    """The agent the user chose (request field or metadata), not a channel's default."""
    agent = inbound.metadata.get("agent")
    return agent if isinstance(agent, str) and agent else None


def _failed(inbound: InboundMessage, exc: Exception, metrics: Metrics) -> OutboundError:
    metrics.run_errors.labels(error_code(exc)).inc()
    if isinstance(exc, OrradError):
        log.warning("run in %s failed: %s", inbound.namespace, exc)
    else:
        log.exception("run in %s crashed", inbound.namespace)
    return OutboundError(inbound.namespace, describe_error(exc), inbound.metadata,
                         code=error_code(exc))


def _notify(inbound: InboundMessage, receipt: Receipt) -> None:
    if inbound.on_recorded is None:
        return
    try:
        inbound.on_recorded(receipt)
    except Exception:
        log.exception("receipt callback failed")


def _inbound_of(entry: LedgerEntry) -> InboundMessage | None:
    payload = entry.payload
    try:
        namespace = Namespace.parse(entry.namespace)
        message = _message_decoder.decode(msgspec.json.encode(payload["message"]))
    except (OrradError, KeyError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    metadata = payload.get("metadata")
    reply_to = payload.get("reply_to")
    hops = payload.get("hops")
    return InboundMessage(namespace, message,
                          dict(metadata) if isinstance(metadata, dict) else {},
                          delivery_id=entry.delivery_id,
                          reply_to=dict(reply_to) if isinstance(reply_to, dict) else {},
                          hops=tuple(str(h) for h in hops) if isinstance(hops, list) else ())


def _stored(entry: LedgerEntry) -> Reply | None:
    """The answer an entry holds, as a reply to deliver (``None`` while unanswered)."""
    if entry.reply is None:
        return None
    try:
        stored = msgspec.convert(entry.reply, StoredReply)
        namespace = Namespace.parse(entry.namespace)
    except (OrradError, msgspec.ValidationError):
        return None
    metadata = entry.payload.get("metadata")
    reply_to = entry.payload.get("reply_to")
    return stored.to_reply(namespace, dict(metadata) if isinstance(metadata, dict) else {},
                           dict(reply_to) if isinstance(reply_to, dict) else {},
                           entry.delivery_id)
