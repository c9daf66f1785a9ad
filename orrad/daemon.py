"""The composition root: one nursery holding the store, router, channels and signal handling.

:meth:`Daemon.run` opens the state store, builds the agents, starts the router and the
channel manager, loads ``channels_dir`` and then waits for a signal: SIGHUP reloads,
SIGTERM/SIGINT stop (intake first, then in-flight replies within the grace period). It also
stops by itself when its only channels are stdin channels that reached end of input.
"""

from __future__ import annotations

import logging
import signal
import time

import trio

from orrad import __version__
from orrad.agents import build_agents
from orrad.channels.base import ChannelContext
from orrad.channels.registry import ChannelRegistry, default_registry
from orrad.config import ChannelConfig, DaemonConfig, load_channels
from orrad.router import Router
from orrad.runtime.providers.http import make_http_client
from orrad.runtime.tools import ToolRegistry, default_tool_registry
from orrad.state import Database, SqliteSessionStore
from orrad.supervisor import ChannelManager, FileResult

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0


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
    ) -> None:
        self.config = config
        self.registry = registry or default_registry()
        self.tools = tools or default_tool_registry()
        self.handle_signals = handle_signals
        self.shutdown_grace_s = shutdown_grace_s
        self.started_at = time.time()
        self.db = Database.in_state_dir(config.state_dir)
        self.store = SqliteSessionStore(self.db)
        self.router: Router | None = None
        self.manager: ChannelManager | None = None
        self.ready = trio.Event()
        self._stop = trio.Event()

    @property
    def version(self) -> str:
        return __version__

    def request_stop(self) -> None:
        self._stop.set()

    def _make_context(self, config: ChannelConfig) -> ChannelContext:
        assert config.name is not None
        return ChannelContext(config.name, self.config, self.db, self.config.instance)

    async def reload(self) -> list[FileResult]:
        """Re-read ``channels_dir`` and apply it file by file."""
        assert self.manager is not None
        channel_set = load_channels(self.config, self.registry.config_types())
        results = await self.manager.apply(channel_set.ok, channel_set.errors)
        for result in results:
            if result.result != "unchanged":
                log.info("reload: %s %s", result.file, result.result)
        return results

    async def run(self) -> None:
        await self.db.open()
        try:
            async with make_http_client(self.config.routing.max_concurrency) as client:
                agents = build_agents(self.config, store=self.store, tools=self.tools,
                                      client=client)
                self.router = Router(agents, max_concurrency=self.config.routing.max_concurrency)
                self.manager = ChannelManager(self.router, self.registry.create,
                                              self._make_context)
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.router.serve)
                    await nursery.start(self.manager.serve)
                    if self.handle_signals:
                        await nursery.start(self._handle_signals)
                    await self.reload()
                    nursery.start_soon(self._stop_when_input_ends)
                    with trio.move_on_after(10):
                        await self.manager.wait_first_attempts()
                    self.ready.set()
                    log.info("orrad %s ready (instance %s)", __version__, self.config.instance)
                    await self._stop.wait()
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.db.close()
        log.info("orrad stopped")

    async def _shutdown(self) -> None:
        """Stop intake, then give in-flight messages the grace period to be answered."""
        assert self.manager is not None and self.router is not None
        log.info("stopping: %d message(s) in flight", self.router.pending)
        await self.manager.stop_all()
        with trio.move_on_after(self.shutdown_grace_s) as scope:
            await self.router.wait_idle()
        if scope.cancelled_caught:
            log.warning("%d message(s) still running after %gs; stopping anyway",
                        self.router.pending, self.shutdown_grace_s)

    async def _stop_when_input_ends(self) -> None:
        assert self.manager is not None
        while True:
            changed = self.manager.changed
            if self.manager.only_completed_stdin():
                log.info("all input consumed; stopping")
                self.request_stop()
                return
            await changed.wait()

    async def _handle_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading %s", self.config.channels_dir)
                    await self.reload()
                else:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    self.request_stop()


def run_daemon(config: DaemonConfig) -> None:
    """Run a daemon in a fresh trio loop (the CLI's entry)."""
    trio.run(Daemon(config).run)
