"""The composition root: one nursery holding the store, router, channels, API and signals.

:meth:`Daemon.run` opens the state store, builds the agents, starts the router, the channel
manager and the daemon API, loads ``channels_dir`` and then waits for a signal: SIGHUP
reloads, SIGTERM/SIGINT stop (intake first, then in-flight replies within the grace
period). It also stops by itself when its only channels are stdin channels that reached end
of input. systemd is told ``READY=1`` once the store is open, listeners are bound and every
channel has finished its first start attempt (at most 10 s), and is pinged while the
supervisor loop is alive.

Configuration files are hostile input: each is read in a worker thread (its own small
thread limiter, so nothing else waits for it) within its time budget, after which the
thread is abandoned and the file rejected. Reloads run beside the signal loop, never in it,
and a stop request cancels any load in progress, so SIGTERM is honoured during a reload.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from orrad.agents import build_agents
from orrad.api import build_api_router
from orrad.channels.base import ChannelContext
from orrad.channels.outbound import OnDemandClient
from orrad.channels.registry import ChannelRegistry, default_registry
from orrad.config import (
    ChannelConfig,
    DaemonConfig,
    find_config_file,
    list_channel_files,
    load_daemon_config,
)
from orrad.config.agents import agent_choice_problem
from orrad.config.loader import LoadedChannel, collect_channels, read_channel_file
from orrad.config.yamlpos import DEFAULT_LIMITS, Limits
from orrad.delivery import Reply
from orrad.errors import (
    ConfigError,
    ConfigErrors,
    DaemonError,
    DaemonStopping,
    OrradError,
    StoreError,
)
from orrad.http import HTTPServer
from orrad.metrics import (
    Metrics,
    channel_up_family,
    in_flight_family,
    peer_queue_family,
    peer_up_family,
)
from orrad.model import InboundMessage, Namespace
from orrad.router import Discard, Router
from orrad.runtime.loop import NamespaceLocks
from orrad.runtime.providers.http import HTTPClient, make_http_client
from orrad.runtime.tools import ToolRegistry, default_tool_registry
from orrad.state import Database, Ledger, SqliteSessionStore
from orrad.state.address import clear_api_address, record_api_address
from orrad.supervisor import ChannelManager, ChannelState, ChannelStatus, FileResult
from orrad.systemd import Notifier
from orrad.version import __version__

if TYPE_CHECKING:
    import httpx

    from orrad.peering import Federation

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
READY_WAIT_S = 10.0
# Senders retry for up to about 3 days (Standard Webhooks, GitHub redelivery): keep ids
# longer than that so a late retry is still recognised.
LEDGER_RETENTION_S = 7 * 86400
LEDGER_PURGE_EVERY_S = 3600.0
API_SOURCE = "api"
CHANNEL_HTTP_TIMEOUT_S = 30.0  # channels' own requests (webhook callbacks)
# Keys of the daemon file that only a restart applies (CONTRACT §2.1).
RESTART_KEYS = ("instance", "state_dir", "api", "routing", "federation")
# How long a reload waits for the channels it started to have their first start attempt.
RELOAD_START_WAIT_S = 5.0
# Worker threads that read configuration files at once. A thread stuck in a read (a hung
# network file system) is abandoned but keeps its token until the read returns: a limiter
# of their own keeps such threads from starving the state store's.
CONFIG_LOAD_THREADS = 4
# A file's time budget is checked while it is parsed; past it and this margin (a read
# blocked in the kernel), the worker is abandoned and the file rejected.
LOAD_MARGIN_S = 2.0

T = TypeVar("T")


# Young collections every 10,000 net allocations instead of 700. Sessions kept in memory
# make a large, long-lived heap: a middle collection walks everything that survived since
# the last one, so it comes every 2 young ones (~20,000 objects, ~15 ms here), not 20
# (~200,000, 0.1-0.17 s, the worst pauses), and a full walk every 200 middle ones, so
# full walks stay as rare as they were with (10,000, 20, 20) (see README, Performance).
GC_THRESHOLDS = (10_000, 2, 200)


def _tune_gc() -> None:
    """Collector settings for a long-running daemon process (process-wide; the CLI's).

    What start-up built (modules, the tokenizer's tables, the configuration) lives as long
    as the process: frozen, it is left out of every later full collection.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _channel_http_client() -> OnDemandClient:
    """The client channels share for their own requests (webhook callbacks), made on first
    use.

    The webhook's callback guard connects to addresses it has checked itself, so no proxy
    from the environment may stand in between (``trust_env=False``), and receivers must
    not be able to plant cookies that the client would then send to other receivers.
    """
    def build() -> httpx.AsyncClient:
        import httpx  # on first use: importing it is a tenth of a start

        return httpx.AsyncClient(
            timeout=httpx.Timeout(CHANNEL_HTTP_TIMEOUT_S),
            limits=httpx.Limits(max_connections=64),
            trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    return OnDemandClient(build)


class Daemon:
    """One orrad process. Construct with a loaded :class:`DaemonConfig`, then ``await run()``."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        registry: ChannelRegistry | None = None,
        tools: ToolRegistry | None = None,
        handle_signals: bool = True,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
        notifier: Notifier | None = None,
        tune_gc: bool = False,
        config_limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.config = config
        self.tune_gc = tune_gc
        self.config_limits = config_limits
        self.registry = registry or default_registry()
        self.tools = tools or default_tool_registry()
        self.handle_signals = handle_signals
        self.shutdown_grace_s = shutdown_grace_s
        self.notifier = notifier or Notifier()
        self.started_at = time.time()
        self.db = Database.in_state_dir(config.state_dir)
        self.store = SqliteSessionStore(self.db)
        self.ledger = Ledger(self.db)
        self.router: Router | None = None
        self.manager: ChannelManager | None = None
        self.api_address: tuple[str, int] | None = None
        self.ready = trio.Event()
        self._stop = trio.Event()
        self._hard_stop = trio.CancelScope()
        # One lock per namespace for every agent, across reloads (runs and session deletes).
        self.locks = NamespaceLocks()
        self._client: HTTPClient | None = None
        self._channel_client: OnDemandClient | None = None
        self.federation: Federation | None = None
        self._reload_lock = trio.Lock()
        self._load_limiter = trio.CapacityLimiter(CONFIG_LOAD_THREADS)
        # Loads (and waits) that a stop request cancels; see _stoppable().
        self._stoppable_scopes: set[trio.CancelScope] = set()
        self._reload_requested = trio.Event()
        # This daemon's instruments, handed to every part it builds; the states are read
        # from the live daemon at each scrape.
        self.metrics = Metrics()
        self.metrics.register(_StateCollector(self))

    # -- the view the API uses (orrad.api.DaemonView) ----------------------------------

    @property
    def instance(self) -> str:
        return self.config.instance

    @property
    def api_token(self) -> str:
        return self.config.api.token

    def require_router(self) -> Router:
        assert self.router is not None, "daemon is not running"
        return self.router

    async def call(self, inbound: InboundMessage) -> Reply:
        return await self.require_router().call(inbound, source=API_SOURCE)

    def agent_error(self, name: str) -> str | None:
        return agent_choice_problem(name, self.config.agents, instance=self.config.instance,
                                    federation=self.config.federation)

    def hold_namespace(self, namespace: Namespace) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(namespace)

    def not_ready(self) -> list[dict[str, Any]]:
        rejected = set(self.manager.rejected_files()) if self.manager else set()
        items: list[dict[str, Any]] = [
            {"name": s.name, "file": s.file, "state": str(s.state),
             **({"rejected": True} if s.file in rejected else {})}
            for s in self.channel_statuses()
            if s.state not in (ChannelState.RUNNING, ChannelState.COMPLETED)
            or s.file in rejected
        ]
        if self.router is not None and self.router.store_error is not None:
            items.append({"name": "state store", "state": "unavailable",
                          "last_error": self.router.store_error})
        elif not self.ready.is_set():
            items.append({"name": "daemon", "state": "starting"})
        return items

    def channel_statuses(self) -> list[ChannelStatus]:
        return self.manager.statuses() if self.manager else []

    def status_json(self) -> dict[str, Any]:
        agents = []
        for name, agent in self.config.agents.items():
            provider = self.config.providers.get(agent.provider)
            agents.append({
                "name": name,
                "provider": agent.provider,
                "model": agent.model or (provider.model if provider else None),
            })
        return {
            "instance": self.config.instance,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "channels": [s.to_json() for s in self.channel_statuses()],
            "peers": self.federation.peer_status() if self.federation else [],
            "agents": agents,
        }

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        states = Counter(str(s.state) for s in self.channel_statuses())
        channels = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
        pending = self.router.pending if self.router else 0
        rejected = len(self.manager.rejected_files()) if self.manager else 0
        problems = f"; {rejected} channel file(s) rejected" if rejected else ""
        return f"channels: {channels}{problems}; {pending} message(s) in flight"

    def gauge_families(self) -> list[Metric]:
        """Channel, message and peer states now (``/metrics`` reads them at each scrape)."""
        channels = channel_up_family()
        for s in self.channel_statuses():
            channels.add_metric([s.name, str(s.state)],
                                1 if s.state is ChannelState.RUNNING else 0)
        families: list[Metric] = [
            channels, in_flight_family(self.router.pending if self.router else 0)]
        if self.federation is not None:
            families += self.federation.gauge_families()
        return families

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop the daemon; a reload or initial load in progress is cancelled at once."""
        self._stop.set()
        for scope in self._stoppable_scopes:
            scope.cancel()

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that :meth:`request_stop` cancels (already cancelled when the
        daemon is stopping); check ``cancelled_caught`` after the block."""
        scope = trio.CancelScope()
        if self._stop.is_set():
            scope.cancel()
        self._stoppable_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._stoppable_scopes.discard(scope)

    async def _off_loop(self, load: Callable[[], T], path: str) -> T:
        """``load()`` (reading the file ``path``) in a worker thread, within the budget.

        Raises:
            ConfigError: the worker did not finish in time; it is abandoned (it may stay
                blocked in the kernel, but never blocks the daemon).
        """
        budget = self.config_limits.time_s + LOAD_MARGIN_S
        with trio.move_on_after(budget):
            return await trio.to_thread.run_sync(load, abandon_on_cancel=True,
                                                 limiter=self._load_limiter)
        log.error("reading %s took longer than %gs; abandoned", path, budget)
        raise ConfigError(f"not read within {budget:g}s (a read that blocks?)", path=path)

    def _make_context(self, config: ChannelConfig) -> ChannelContext:
        assert config.name is not None
        return ChannelContext(config.name, self.config, self.db, self.config.instance,
                              agents=lambda: list(self.config.agents),
                              http=self._channel_client,
                              keeps_running=lambda: self._keeps_running_without(config),
                              metrics=self.metrics)

    def _keeps_running_without(self, config: ChannelConfig) -> bool:
        """Whether the daemon goes on once the channel of ``config`` has finished."""
        manager = self.manager
        return manager is None or not manager.only_completed_stdin(finishing=config.name)

    async def reload(self) -> list[FileResult]:
        """Re-read the daemon file (agents, providers, policies) and ``channels_dir``.

        Raises:
            DaemonStopping: the daemon stopped before or during the reload (which is then
                abandoned where it was).
        """
        with self._stoppable():
            async with self._reload_lock:
                self.notifier.reloading()
                try:
                    daemon_file = await self._reload_daemon_file()
                    channels = await self._load_channels()
                    return channels if daemon_file is None else [daemon_file, *channels]
                finally:
                    if not self._stop.is_set():  # READY=1 after STOPPING=1 would confuse
                        self.notifier.ready(self.summary())
        raise DaemonStopping("the daemon is stopping; the reload was not done")

    async def _reload_when_asked(self) -> None:
        """Run a reload for each SIGHUP, beside the signal loop (several SIGHUPs during a
        reload make one more reload after it)."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested = trio.Event()
            try:
                await self.reload()
            except DaemonStopping:
                return

    async def _read_channel_file(
        self, path: str, config: DaemonConfig, kinds: Mapping[str, type[ChannelConfig]]
    ) -> LoadedChannel | ConfigErrors:
        """One channel file's outcome; whatever goes wrong, it concerns that file only."""
        limits = self.config_limits
        try:
            return await self._off_loop(
                lambda: read_channel_file(path, config, kinds, limits=limits), path)
        except ConfigErrors as exc:
            return exc
        except ConfigError as exc:
            return ConfigErrors([exc])
        except Exception as exc:  # a plugin's own checks failing, say: not the daemon's end
            log.error("channel file %s: %s raised while loading it", path, type(exc).__name__)
            log.debug("loading %s", path, exc_info=True)
            return ConfigErrors([ConfigError(
                f"cannot load the file: {type(exc).__name__} raised while checking it",
                path=path)])

    async def _load_channels(self) -> list[FileResult]:
        assert self.manager is not None
        holders = {runner.name: file for file, runner in self.manager.runners.items()}
        config, channels_dir = self.config, self.config.channels_dir
        kinds = self.registry.config_types()

        def listing() -> list[str]:
            if not os.path.isdir(channels_dir):
                log.warning("channels_dir %s does not exist: no channel runs (create it, add "
                            "channel files and reload)", channels_dir)
            return list_channel_files(channels_dir)

        # Listing, file reads and ${file:...} expansion: off the event loop, file by file.
        try:
            files = await self._off_loop(listing, channels_dir)
        except ConfigError as exc:
            return [FileResult(channels_dir, "rejected", f"{exc}; no channel file was read")]
        outcomes = {path: await self._read_channel_file(path, config, kinds) for path in files}
        channel_set = collect_channels(outcomes, holders)
        results = await self.manager.apply(channel_set.ok, channel_set.errors)
        # What a reload started answers only once it has had its first start attempt (a
        # webhook is listening when `orrad reload` says "started"), within a bound.
        with trio.move_on_after(RELOAD_START_WAIT_S):
            await self.manager.wait_first_attempts()
        for result in results:
            if result.result != "unchanged":
                log.info("channel file %s: %s", result.file, result.result)
        return results

    async def _reload_daemon_file(self) -> FileResult | None:
        """Re-read the daemon file; its outcome for the reload's answer (``None``: there is
        no daemon file, as at start).

        A daemon started without one looks again where ``orrad run`` looked
        (``$ORRAD_CONFIG``, ``./orrad.yaml``, ``/etc/orrad/orrad.yaml``), so a file created
        later is taken up by the next reload.
        """
        if self._client is None or self.router is None:
            return None
        path = self.config.path
        if path is None:
            try:
                path = await self._off_loop(lambda: find_config_file(None), "daemon file")
            except ConfigError as exc:
                return FileResult(exc.path or "daemon file", "rejected", str(exc))
            if path is None:
                return None
        client, shown, tools, limits = self._client, path, self.tools.names(), self.config_limits
        try:
            fresh = await self._off_loop(
                lambda: load_daemon_config(path, known_tools=tools, limits=limits), path)
        except (ConfigErrors, ConfigError) as exc:
            errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            for error in errors:
                log.error("%s (daemon file not reloaded)", error)
            return FileResult(shown, "rejected", "\n".join(str(e) for e in errors))
        pending = [key for key in RESTART_KEYS if getattr(fresh, key) != getattr(self.config, key)]
        for key in pending:
            log.warning("daemon file: %s changed; it takes effect after a restart", key)
        note = (f"{', '.join(pending)} changed: only a restart applies "
                f"{'it' if len(pending) == 1 else 'them'}") if pending else None
        live = {k: getattr(self.config, k) for k in RESTART_KEYS}
        fresh = msgspec.structs.replace(fresh, **live)
        if fresh == self.config:
            return FileResult(shown, "unchanged", note=note)
        try:
            # Tokenizer files may be read for the first time: off the event loop too.
            agents = await trio.to_thread.run_sync(lambda: build_agents(
                fresh, store=self.store, tools=self.tools, client=client, locks=self.locks,
                metrics=self.metrics))
        except OrradError as exc:
            log.error("%s (daemon file not reloaded)", exc)
            return FileResult(shown, "rejected", f"{shown}: {exc}")
        self.router.agents = agents
        self.config = fresh
        log.info("daemon file %s: reloaded", shown)
        return FileResult(shown, "reloaded", note=note)

    async def run(self) -> None:
        """Run until stopped; signals are watched for the daemon's whole life.

        The signal receiver outlives every other part, so a SIGTERM that arrives while the
        daemon is already shutting down is seen (a second one stops at once) instead of
        falling back to Python's default handler and killing the process mid-cleanup.
        """
        if not self.handle_signals:
            await self._run()
            return
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            if _EARLY_SIGNALS:
                self.request_stop()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._handle_signals, signals)
                await self._run()
                nursery.cancel_scope.cancel()

    async def _run(self) -> None:
        await self.db.open()
        try:
            async with make_http_client(self.config.routing.max_concurrency) as client, \
                    _channel_http_client() as outbound:
                self._client = client
                self._channel_client = outbound
                await self._run_with(client)
        finally:
            with trio.CancelScope(shield=True):
                await self.db.close()
            self.notifier.close()
        log.info("orrad stopped")

    async def _run_with(self, client: HTTPClient) -> None:
        with self._hard_stop:
            await self._serve(client)

    async def _serve(self, client: HTTPClient) -> None:
        agents = build_agents(self.config, store=self.store, tools=self.tools, client=client,
                              locks=self.locks, metrics=self.metrics)
        async with contextlib.AsyncExitStack() as stack:
            federation: Federation | None = None
            if self.config.federation is not None:
                # Imported only here: federation brings httpx and its models in.
                from orrad.peering import Federation

                http = await stack.enter_async_context(Federation.http_client())
                relays = await stack.enter_async_context(Federation.relay_client())
                federation = self.federation = Federation(
                    self.config, self.config.federation, store=self.store,
                    current_config=lambda: self.config, http=http, metrics=self.metrics,
                    relays=relays)
            self.router = Router(agents, ledger=self.ledger,
                                 max_concurrency=self.config.routing.max_concurrency,
                                 rerun_interrupted=self.config.routing.rerun_interrupted,
                                 relayer=federation, instance=self.config.instance,
                                 metrics=self.metrics)
            if federation is not None:
                federation.router = self.router
            await self._serve_with(federation)

    async def _serve_with(self, federation: Federation | None) -> None:
        assert self.router is not None
        # The supervisor hands every started channel to the router's pump.
        self.manager = ChannelManager(self.router.intake, self.registry.create,
                                      self._make_context, metrics=self.metrics)
        api_server: HTTPServer | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.router.serve)
            # The API's callers are gone after a restart: what they left is answered into
            # the sessions only.
            await self.router.attach(API_SOURCE, Discard())
            if federation is not None:
                await nursery.start(federation.serve)
            await nursery.start(self.manager.serve)
            if self.config.api.listen:
                api_server = HTTPServer(build_api_router(self), name="api")
                try:
                    self.api_address = await nursery.start(api_server.serve,
                                                           self.config.api.listen)
                except OSError as exc:
                    raise DaemonError(
                        f"cannot listen on api.listen {self.config.api.listen}: {exc.strerror}"
                    ) from None
                log.info("daemon API listening on %s:%d", *self.api_address)
                state_dir, (host, port) = self.config.state_dir, self.api_address
                await trio.to_thread.run_sync(record_api_address, state_dir, host, port)
                nursery.start_soon(self._clear_api_address_at_exit)
            with self._stoppable():  # SIGTERM while the files are read: stop now
                await self._load_channels()
            nursery.start_soon(self._stop_when_input_ends)
            nursery.start_soon(self._reload_when_asked)
            with trio.move_on_after(READY_WAIT_S), self._stoppable():
                await self.manager.wait_first_attempts()
            self.ready.set()
            self.notifier.ready(self.summary())
            if self.tune_gc:
                _tune_gc()
            if self.notifier.watchdog_s:
                nursery.start_soon(self._watchdog, self.notifier.watchdog_s)
            nursery.start_soon(self._report_status)
            nursery.start_soon(self._purge_ledger)
            log.info("orrad %s ready (instance %s)", __version__, self.config.instance)
            await self._stop.wait()
            self.notifier.stopping()
            await self._shutdown(api_server)
            nursery.cancel_scope.cancel()

    async def _clear_api_address_at_exit(self) -> None:
        """Remove the API address record when the daemon stops (cancelled at its end)."""
        try:
            await trio.sleep_forever()
        finally:
            clear_api_address(self.config.state_dir)  # one small unlink: fine on the loop

    async def _shutdown(self, api_server: HTTPServer | None) -> None:
        """Stop intake, then give in-flight messages the grace period to be answered."""
        assert self.manager is not None and self.router is not None
        log.info("stopping: %d message(s) in flight", self.router.pending)
        # Stop accepting everywhere at once: channels, the API and the federation listener
        # (each lets the requests it already took finish within its own grace).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.manager.stop_all)
            if api_server is not None:
                nursery.start_soon(_stop_within, api_server.stop, self.shutdown_grace_s)
            if self.federation is not None:
                nursery.start_soon(_stop_within, self.federation.stop, self.shutdown_grace_s)
        with trio.move_on_after(self.shutdown_grace_s) as scope:
            # Runs finish and their answers are stored; answers for channels that are
            # already stopped wait in the ledger for the next start.
            await self.router.wait_settled()
        if scope.cancelled_caught:
            log.warning("%d message(s) still running after %gs; stopping anyway",
                        self.router.pending, self.shutdown_grace_s)

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd while the supervisor loop is alive; a blocked loop stops the pings."""
        assert self.manager is not None
        while True:
            if self.manager.alive:
                self.notifier.watchdog()
            await trio.sleep(interval)

    async def _purge_ledger(self) -> None:
        """Forget finished messages once no sender would retry them any more."""
        while True:
            try:
                removed = await self.ledger.purge(LEDGER_RETENTION_S)
            except StoreError as exc:
                log.warning("ledger purge failed: %s", exc)
            else:
                if removed:
                    log.info("ledger: forgot %d finished messages older than %d days",
                             removed, LEDGER_RETENTION_S // 86400)
            await trio.sleep(LEDGER_PURGE_EVERY_S)

    async def _report_status(self) -> None:
        assert self.manager is not None
        last = ""
        while True:
            await self.manager.changed.wait()
            summary = self.summary()
            if summary != last:
                self.notifier.status(summary)
                last = summary

    async def _stop_when_input_ends(self) -> None:
        assert self.manager is not None
        while True:
            changed = self.manager.changed
            if self.manager.only_completed_stdin():
                log.info("all input consumed; stopping")
                self.request_stop()
                return
            await changed.wait()

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if self.manager is None:
                    continue  # still starting: the channels are about to be read anyway
                log.info("SIGHUP: reloading %s", self.config.channels_dir)
                # Never awaited here: a reload must not keep SIGTERM from being seen.
                self._reload_requested.set()
            elif self._stop.is_set():
                log.warning("%s again: stopping now, without waiting for in-flight work",
                            signal.Signals(signum).name)
                self._hard_stop.cancel()
            else:
                log.info("%s: stopping", signal.Signals(signum).name)
                self.request_stop()


class _StateCollector(Collector):
    """The daemon's states as gauges, read at scrape time (nothing is stored)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterable[Metric]:
        return self._daemon.gauge_families()

    def describe(self) -> Iterable[Metric]:
        # The names, so the registry refuses an instrument that would clash with them.
        return [channel_up_family(), in_flight_family(), peer_up_family(), peer_queue_family()]


async def _stop_within(stop: Callable[[], Awaitable[None]], grace_s: float) -> None:
    with trio.move_on_after(grace_s):
        await stop()


# Set by the process-wide handlers run_daemon installs: a stop signal that arrived before
# the daemon's own receiver was open (or after it closed, when it is harmless).
_EARLY_SIGNALS: list[int] = []


def _remember_signal(signum: int, frame: FrameType | None) -> None:
    _EARLY_SIGNALS.append(signum)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def run_daemon(config: DaemonConfig) -> None:
    """Run a daemon in a fresh trio loop (the CLI's entry).

    Start-up failures (a listener that cannot bind, an unusable state directory) surface as
    :class:`~orrad.errors.DaemonError` with a one-line message, never as a traceback.
    """
    # Python's default handlers would kill the process if SIGTERM arrived before the
    # daemon's receiver is open or while trio re-delivers pending signals at exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _remember_signal)
    try:
        trio.run(Daemon(config, tune_gc=True).run)
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, OrradError):
            raise leaf from None
        if isinstance(leaf, OSError):
            raise DaemonError(f"cannot start: {leaf}") from None
        raise
    except OSError as exc:
        raise DaemonError(f"cannot start: {exc}") from None
    finally:
        # The daemon is done: a stop signal now (e.g. a second SIGTERM) must not kill the
        # process during interpreter shutdown, which resets handlers to the default.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
