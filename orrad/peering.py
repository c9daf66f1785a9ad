"""Federation wired into the daemon: who owns a namespace, relays out, relays in.

:class:`Federation` is both sides of CONTRACT §6 for one daemon:

- for the :class:`~orrad.router.Router` (its ``Relayer``): :meth:`Federation.owner` decides
  whether a message runs here or at a peer (longest claimed prefix, or ``name@peer``), and
  :meth:`Federation.relay` sends it there with a ``txn_id`` that is stable across restarts,
  applying the peer's ``on_unavailable`` policy when it cannot be reached: ``fail`` (503
  naming the peer, within 5 s), ``local`` (answered here) or ``queue`` (the message keeps
  its place in its namespace's lane — it is already in the ledger — and is relayed once
  the peer answers again, or answered ``expired`` after ``queue_ttl_s``);
- for the peers (its ``FederationHost``): :meth:`Federation.relay_in` runs a verified
  relay through the same pipeline as any channel's message, recorded in the ledger under
  ``(peer:<origin>, txn_id)``, so a retried relay returns the stored answer without
  running the agent again, also after a restart; the listener is :meth:`Federation.serve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import trio
from prometheus_client.core import GaugeMetricFamily

from orrad.config import DaemonConfig, FederationConfig, PeerConfig
from orrad.delivery import Reply, status_for_code
from orrad.errors import InvalidNamespace, StoreError
from orrad.federation.breaker import BreakerState, CircuitBreaker
from orrad.federation.client import PeerClient, RetrySettings, make_http_client, peers_from_config
from orrad.federation.errors import FederationError, LoopDetected, PeerError
from orrad.federation.routing import RoutingTable, hops_for_relay
from orrad.federation.server import build_federation_router
from orrad.federation.signing import Verifier
from orrad.federation.wire import (
    AgentInfo,
    RelayRequest,
    RelayResponse,
    SessionDetail,
    SessionInfo,
    SessionMessage,
    WireUsage,
)
from orrad.http import HTTPServer
from orrad.http.client import PooledClient
from orrad.metrics import Metrics, peer_queue_family, peer_up_family
from orrad.model import (
    InboundMessage,
    Message,
    Namespace,
    OutboundError,
    OutboundMessage,
    RunSummary,
)
from orrad.router import Discard, Ownership, Router
from orrad.runtime.sessions import SessionStore
from orrad.version import __version__

__all__ = ["Federation"]

log = logging.getLogger(__name__)

# `fail` must answer within 5 s (CONTRACT §6): three attempts, each with a short connect
# deadline and a short backoff, fit in that even when the peer's host does not answer.
RETRY = RetrySettings(attempts=3, backoff_base_s=0.2, backoff_max_s=1.0)
CONNECT_TIMEOUT_S = 1.2
RELAY_CONNECTIONS = 64  # relays in flight at once, all peers together (more wait)
BREAKER_FAILURES = 5  # more than one call's attempts: a cut connection alone never opens it
BREAKER_COOLDOWN_S = 2.0
BREAKER_MAX_COOLDOWN_S = 10.0  # a queued message waits at most this long after the peer returns
QUEUE_RETRY_INITIAL_S = 0.5
QUEUE_RETRY_MAX_S = 5.0
HEALTH_EVERY_S = 15.0
IN_PROGRESS_POLL_S = 0.25
RELAY_IN_TIMEOUT_S = 600.0


# Statuses of the relay endpoint that differ from a channel's: a loop is 409 between
# daemons (never retried); only the channel that received the message answers 508.
_RELAY_STATUS = {"loop_detected": 409}


def _store_unavailable(what: str, exc: StoreError) -> FederationError:
    """A peer's read of our store failed (a damaged database included): logged, and a 503
    without the details (they name files)."""
    log.error("federation: reading %s failed: %s", what, exc)
    return FederationError(503, "unavailable", "the state store is unavailable; retry later")


def _source(origin: str) -> str:
    return f"peer:{origin}"


class Federation:
    """One daemon's federation (see the module docstring).

    ``config`` is read through ``current_config`` so agents added by a reload are offered
    to peers at once; ``federation`` itself applies only at start (CONTRACT §2.1).
    """

    def __init__(self, config: DaemonConfig, federation: FederationConfig, *,
                 store: SessionStore, current_config: Callable[[], DaemonConfig],
                 http: httpx.AsyncClient, metrics: Metrics | None = None,
                 relays: PooledClient | None = None) -> None:
        self.instance = config.instance
        self.metrics = metrics if metrics is not None else Metrics()
        self.federation = federation
        self.version = __version__
        self.max_hops = federation.max_hops
        self.store = store
        self.current_config = current_config
        self.table = RoutingTable.from_config(config.instance, federation)
        self._peers: dict[str, PeerConfig] = {p.name: p for p in federation.peers}
        peers = peers_from_config(federation)
        self.client = PeerClient(config.instance, peers, http, retry=RETRY,
                                 breaker_factory=_breaker,
                                 connect_timeout_s=CONNECT_TIMEOUT_S, relays=relays)
        self.verifier = Verifier(config.instance, {p.name: p.secret for p in peers})
        self.router: Router | None = None
        self.address: tuple[str, int] | None = None
        self._server: HTTPServer | None = None

    @staticmethod
    def http_client() -> httpx.AsyncClient:
        return make_http_client(connect_timeout_s=CONNECT_TIMEOUT_S)

    @staticmethod
    def relay_client() -> PooledClient:
        """The client relays go over (one call per message: the lean one)."""
        return PooledClient(RELAY_CONNECTIONS, connect_timeout_s=CONNECT_TIMEOUT_S,
                            user_agent=f"orrad/{__version__}")

    # -- the router's side (Relayer) ---------------------------------------------------

    def owner(self, namespace: Namespace, agent: str | None) -> Ownership:
        """``name@peer`` relays to that peer's agent; otherwise the longest claimed prefix
        decides, with the user's ``agent`` (if any) carried along."""
        name: str | None = None
        if agent is not None:
            ref = self.table.parse_agent(agent)  # UnknownPeer: 400 unknown_agent
            if ref.peer is not None:
                return Ownership(ref.peer, ref.name)
            name = ref.name
        return Ownership(self.table.owner(namespace), name)

    def would_queue(self, namespace: Namespace, agent: str | None) -> bool:
        owner = self.owner(namespace, agent)
        if owner.peer is None or self._peers[owner.peer].on_unavailable != "queue":
            return False
        return self.client.status(owner.peer).breaker.state is not BreakerState.CLOSED

    async def relay(self, peer: str, txn_id: str, inbound: InboundMessage, agent: str | None,
                    received_at: float, on_queued: Callable[[], None]) -> Reply | None:
        """Relay ``inbound`` to ``peer``; see the module docstring for the policies."""
        config = self._peers[peer]
        namespace = inbound.namespace
        try:
            hops = hops_for_relay(inbound.hops, instance=self.instance, peer=peer,
                                  max_hops=self.max_hops)
        except LoopDetected as exc:
            self.metrics.federation_relays.labels(peer, "loop_detected").inc()
            log.warning("relay of %s to %s refused: %s", namespace, peer, exc.message)
            return OutboundError(namespace, exc.message, inbound.metadata, code=exc.code)
        metadata = {k: v for k, v in inbound.metadata.items() if k != "agent"}
        request = RelayRequest(txn_id=txn_id, origin=self.instance, namespace=namespace.key,
                               message=inbound.message.content, hops=hops, agent=agent,
                               metadata=metadata)
        queued = False
        delay = QUEUE_RETRY_INITIAL_S
        while True:
            try:
                response = await self.client.relay(peer, request)
            except PeerError as exc:
                if not exc.unavailable:
                    self.metrics.federation_relays.labels(peer, exc.code).inc()
                    log.warning("relay of %s to %s: %s", namespace, peer, exc.message)
                    return OutboundError(namespace, exc.message, inbound.metadata,
                                         code=exc.code)
                if config.on_unavailable == "fail":
                    self.metrics.federation_relays.labels(peer, "unavailable").inc()
                    log.warning("relay of %s: %s", namespace, exc.message)
                    return OutboundError(namespace, exc.message, inbound.metadata,
                                         code="unavailable")
                if config.on_unavailable == "local":
                    self.metrics.federation_relays.labels(peer, "local").inc()
                    log.warning("relay of %s: %s; answering here (on_unavailable: local)",
                                namespace, exc.message)
                    return None
                waited = time.time() - received_at
                if waited >= config.queue_ttl_s:
                    self.metrics.federation_relays.labels(peer, "expired").inc()
                    log.warning("relay of %s to %s expired after %.0fs in the queue",
                                namespace, peer, waited)
                    return OutboundError(
                        namespace, f"peer {peer!r} stayed unavailable for "
                        f"{config.queue_ttl_s:g}s; the message expired", inbound.metadata,
                        code="expired")
                if not queued:
                    queued = True
                    log.warning("relay of %s: %s; queued until it answers", namespace,
                                exc.message)
                    on_queued()
                await trio.sleep(min(delay, config.queue_ttl_s - waited))
                delay = min(delay * 2, QUEUE_RETRY_MAX_S)
                continue
            self.metrics.federation_relays.labels(peer, "ok").inc()
            return OutboundMessage(
                namespace, Message.assistant(response.message),
                RunSummary(response.agent or "", response.usage.to_usage(),
                           instance=response.instance or peer),
                inbound.metadata)

    # -- the peers' side (FederationHost) ----------------------------------------------

    def agents(self) -> list[AgentInfo]:
        config = self.current_config()
        out = []
        for name, agent in config.agents.items():
            provider = config.providers.get(agent.provider)
            out.append(AgentInfo(name=name, description=agent.description,
                                 model=agent.model or (provider.model if provider else None),
                                 instance=self.instance))
        return out

    async def relay_in(self, request: RelayRequest) -> RelayResponse:
        """Answer a verified relay through the pipeline (module docstring)."""
        router = self._router()
        namespace = Namespace.parse(request.namespace)
        self.metrics.federation_received.labels(request.origin).inc()
        source = _source(request.origin)
        with trio.move_on_after(RELAY_IN_TIMEOUT_S):
            metadata = {k: v for k, v in request.metadata.items() if k != "agent"}
            if request.agent:
                metadata["agent"] = request.agent
            inbound = InboundMessage(namespace, Message.user(request.message), metadata,
                                     delivery_id=request.txn_id, hops=tuple(request.hops))
            try:
                reply: Reply = await router.call(inbound, source=source)
            except StoreError:
                raise FederationError(503, "unavailable",
                                      "the state store is unavailable; retry later") from None
            while isinstance(reply, OutboundError) and reply.code == "in_progress":
                # A retry of a relay still running here: wait for the first one's answer
                # in the ledger (a read, not another message in the pipeline).
                await trio.sleep(IN_PROGRESS_POLL_S)
                try:
                    stored = await router.stored_answer(source, request.txn_id)
                except StoreError:
                    continue
                if stored is not None:
                    reply = stored
            if isinstance(reply, OutboundError):
                raise FederationError(_RELAY_STATUS.get(reply.code, status_for_code(reply.code)),
                                      reply.code, reply.error)
            summary = reply.run_result
            return RelayResponse(txn_id=request.txn_id, message=reply.message.content,
                                 namespace=namespace.key, agent=summary.agent or None,
                                 instance=summary.instance or self.instance,
                                 usage=WireUsage.from_usage(summary.total_usage))
        raise FederationError(504, "timeout", f"no answer within {RELAY_IN_TIMEOUT_S:g}s")

    async def list_sessions(self, prefix: str) -> list[SessionInfo]:
        try:
            parsed = Namespace.parse(prefix) if prefix else None
        except InvalidNamespace as exc:
            raise FederationError(400, "bad_request", str(exc)) from None
        try:
            infos = await self.store.list(parsed)
        except StoreError as exc:
            raise _store_unavailable("sessions", exc) from None
        return [SessionInfo(namespace=i.namespace, message_count=i.message_count,
                            created_at=i.created_at, updated_at=i.updated_at)
                for i in infos]

    async def session_detail(self, namespace: str) -> SessionDetail | None:
        try:
            session = await self.store.load(Namespace.parse(namespace))
        except StoreError as exc:
            raise _store_unavailable(f"session {namespace}", exc) from None
        if session is None:
            return None
        return SessionDetail(namespace=session.namespace,
                             messages=[SessionMessage.from_message(m) for m in session.messages])

    def _router(self) -> Router:
        if self.router is None:
            raise FederationError(503, "unavailable", "the daemon is starting")
        return self.router

    # -- lifecycle and status ------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]] = (
            trio.TASK_STATUS_IGNORED)) -> None:
        """Serve ``federation.listen`` and watch the peers' health; finish what relays of
        each peer left open in the ledger (their results are kept for the retries)."""
        router = self._router()
        for peer in self._peers:
            await router.attach(_source(peer), Discard())
        server = self._server = HTTPServer(build_federation_router(_Host(self), self.verifier),
                                           name="federation")
        async with trio.open_nursery() as nursery:
            try:
                self.address = await nursery.start(server.serve, self.federation.listen)
            except OSError as exc:
                raise FederationError(
                    500, "unavailable", f"cannot listen on federation.listen "
                    f"{self.federation.listen}: {exc.strerror}") from None
            log.info("federation listening on %s:%d for %d peer(s)", *self.address,
                     len(self._peers))
            for peer in self._peers:
                nursery.start_soon(self._watch, peer)
            task_status.started(self.address)
            await trio.sleep_forever()

    async def stop(self) -> None:
        """Stop accepting relays; the ones in progress get their answers (server drain)."""
        if self._server is not None:
            await self._server.stop()

    async def _watch(self, peer: str) -> None:
        """Ask the peer's health now and then, so its state in ``/v1/status`` is true."""
        while True:
            try:
                await self.client.health(peer)
            except PeerError as exc:
                log.debug("peer %s health: %s", peer, exc.message)
            await trio.sleep(HEALTH_EVERY_S)

    def queue_depth(self, peer: str) -> int:
        """Messages waiting for ``peer``: every one in a lane whose head waits for it."""
        return 0 if self.router is None else self.router.queued_for(peer)

    def peer_status(self) -> list[dict[str, Any]]:
        """``/v1/status`` ``peers`` (CONTRACT §5), plus breaker and round-trip time."""
        out = []
        for name, config in self._peers.items():
            status = self.client.status(name)
            breaker = status.breaker
            state = {BreakerState.CLOSED: "up", BreakerState.OPEN: "down",
                     BreakerState.HALF_OPEN: "probing"}[breaker.state]
            if state == "up" and breaker.consecutive_failures:
                state = "degraded"
            out.append({
                "name": name, "url": config.url, "state": state,
                "last_error": status.last_error, "queue_depth": self.queue_depth(name),
                "breaker": str(breaker.state), "rtt_ms": _round(status.rtt_ms),
                "namespaces": list(config.namespaces), "on_unavailable": config.on_unavailable,
            })
        return out

    def gauge_families(self) -> list[GaugeMetricFamily]:
        """The peers' states now, for the daemon's scrape-time collector."""
        up = peer_up_family()
        for peer in self.peer_status():
            up.add_metric([peer["name"]], 1 if peer["state"] in ("up", "degraded") else 0)
        depth = peer_queue_family()
        for name in self._peers:
            depth.add_metric([name], self.queue_depth(name))
        return [up, depth]


class _Host:
    """The :class:`~orrad.federation.server.FederationHost` view of a Federation."""

    def __init__(self, federation: Federation) -> None:
        self._f = federation

    @property
    def instance(self) -> str:
        return self._f.instance

    @property
    def version(self) -> str:
        return self._f.version

    @property
    def max_hops(self) -> int:
        return self._f.max_hops

    def agents(self) -> list[AgentInfo]:
        return self._f.agents()

    async def relay(self, request: RelayRequest) -> RelayResponse:
        return await self._f.relay_in(request)

    async def list_sessions(self, prefix: str) -> list[SessionInfo]:
        return await self._f.list_sessions(prefix)

    async def session_detail(self, namespace: str) -> SessionDetail | None:
        return await self._f.session_detail(namespace)


def _breaker(name: str) -> CircuitBreaker:
    return CircuitBreaker(name, failure_threshold=BREAKER_FAILURES,
                          cooldown_s=BREAKER_COOLDOWN_S, max_cooldown_s=BREAKER_MAX_COOLDOWN_S)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
