"""HTTPServer: listening, accepting, the timeout reaper, and graceful drain.

Task layout inside :meth:`HTTPServer.serve`, all owned by the server::

    outer nursery
    ├── reaper (one task: enforces every connection's current deadline)
    └── connection nursery (one task per connection, plus short-lived 503 refusals)
        └── accept nursery (one accept loop per listening socket)
"""

from __future__ import annotations

import errno
import logging
from math import inf

import trio

from orrad.http.connection import IDLE, Connection, Shared
from orrad.http.limits import ServerLimits, parse_listen
from orrad.http.messages import Handler, error_response
from orrad.http.routing import Router

__all__ = ["HTTPServer"]

logger = logging.getLogger(__name__)

# Accept failures that mean "out of resources right now": back off and retry, as
# trio.serve_listeners does, instead of killing the listener.
_ACCEPT_RETRY_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED}
)
_MAX_REFUSING = 64  # concurrent "503, go away" tasks; beyond this, refused sockets just close
# The reaper never wakes more often than this: deadlines are enforced to within 20 ms, and
# many connections expiring at nearby times cost one scan, not one scan each.
_REAP_GRANULARITY_S = 0.02
_DEFAULT_LIMITS = ServerLimits()


class HTTPServer:
    """A trio-native HTTP/1.1 server over h11 with strict limits and graceful drain.

    ``handler`` is a :class:`~orrad.http.Router` (per-route body limits, 404/405) or one
    async handler answering every request. Each instance serves once: run :meth:`serve` in a
    nursery (``await nursery.start(server.serve, "127.0.0.1:0")`` returns the bound
    address) and end it with :meth:`stop` (graceful) or by cancelling it (immediate).
    """

    def __init__(
        self,
        handler: Router | Handler,
        *,
        limits: ServerLimits = _DEFAULT_LIMITS,
        name: str = "http",
        server_header: str = "orrad",
    ) -> None:
        if isinstance(handler, Router):
            route = handler.route
        else:
            single = handler

            def route(method: str, path: str) -> tuple[Handler, dict[str, str], int | None]:
                return single, {}, None

        self._shared = Shared(limits, route, name, server_header)
        self._limits = limits
        self._name = name
        self._refusing = 0
        self._started = False
        self._done = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._listeners: list[trio.SocketListener] = []
        self.bound: tuple[str, int] | None = None
        """The address actually listened on, once :meth:`serve` has started."""

    @property
    def active_connections(self) -> int:
        """Connections currently open (refused ones not counted)."""
        return len(self._shared.connections)

    @property
    def in_flight(self) -> int:
        """Requests whose handler is running right now."""
        return self._shared.in_flight

    async def serve(
        self,
        listen: str,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``listen`` (``"HOST:PORT"``, port 0 allowed) and serve.

        Calls ``task_status.started((host, port))`` with the bound address once listening.
        Returns after :meth:`stop` has drained every connection; cancelling it closes all
        connections at once (in-flight handlers are cancelled).

        Raises:
            ValueError: ``listen`` is malformed (see :func:`~orrad.http.parse_listen`).
            OSError: the address cannot be bound.
            RuntimeError: this server already served or was stopped.
        """
        if self._started or self._shared.stopping:
            raise RuntimeError(f"{self._name}: an HTTPServer serves only once")
        self._started = True
        try:
            host, port = parse_listen(listen)
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            if port == 0:
                # A name like "localhost" can resolve to several addresses, and each would
                # get its own random port; serve the first one only, so "bound" is the truth.
                for extra in listeners[1:]:
                    extra.socket.close()
                del listeners[1:]
            self._listeners = listeners
            sockname = listeners[0].socket.getsockname()
            self.bound = (sockname[0], sockname[1])
            async with trio.open_nursery() as outer:
                outer.start_soon(self._reap)
                async with trio.open_nursery() as conn_nursery:
                    async with trio.open_nursery() as accept_nursery:
                        self._accept_scope = accept_nursery.cancel_scope
                        if self._shared.stopping:  # stop() ran while we were binding
                            accept_nursery.cancel_scope.cancel()
                        for listener in listeners:
                            accept_nursery.start_soon(self._accept_loop, listener, conn_nursery)
                        task_status.started(self.bound)
                    # Only stop() ends the accept loops; from here on, in-flight requests
                    # have drain_timeout_s before the connection nursery cancels them.
                    conn_nursery.cancel_scope.deadline = (
                        trio.current_time() + self._limits.drain_timeout_s
                    )
                outer.cancel_scope.cancel()  # the reaper has nothing left to watch
        finally:
            for listener in self._listeners:
                listener.socket.close()
            self._done.set()

    async def stop(self) -> None:
        """Drain gracefully; return once every connection is closed and :meth:`serve` ended.

        Stops accepting at once (later connects are refused), closes idle connections, lets
        in-flight requests finish and answers them with ``Connection: close`` for up to
        ``drain_timeout_s``, then cancels the rest. Idempotent; concurrent callers all wait
        for the drain. If :meth:`serve` never ran, only marks the server stopped.
        """
        shared = self._shared
        if not shared.stopping:
            shared.stopping = True
            if self._accept_scope is not None:
                self._accept_scope.cancel()
            # Close the listening sockets now rather than when the accept tasks next run, so
            # that a connect made after stop() began is refused, never left in the backlog.
            for listener in self._listeners:
                listener.socket.close()
            for conn in shared.connections:
                if conn.phase == IDLE:  # between requests: nothing to finish
                    conn.scope.cancel()
        if self._started:
            await self._done.wait()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        shared = self._shared
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # stop() closed the listener
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                logger.warning("%s: accept failed (%s); retrying shortly", self._name, exc)
                await trio.sleep(0.1)
                continue
            # trio's SocketStream has already set TCP_NODELAY. The connection is registered
            # before its task starts, so a burst of accepts cannot overshoot the limits.
            conn = Connection(stream, shared)
            if not shared.admit(conn):
                if self._refusing < _MAX_REFUSING:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                else:
                    stream.socket.close()
                continue
            nursery.start_soon(conn.run)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Answer 503 without reading the request, then close (over max_connections)."""
        try:
            conn = Connection(stream, self._shared)
            await conn.send_early(error_response(503, "unavailable", "too many connections"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _reap(self) -> None:
        """Cancel every connection whose current deadline has passed, then sleep until the
        earliest remaining one (a connection arming an earlier deadline wakes us sooner)."""
        shared = self._shared
        while True:
            now = trio.current_time()
            wake = inf
            for conn in shared.connections:
                deadline = conn.deadline
                if deadline <= now:
                    conn.deadline = inf
                    conn.expired = True
                    conn.scope.cancel()
                elif deadline < wake:
                    wake = deadline
            if wake != inf:
                wake = max(wake, now + _REAP_GRANULARITY_S)
            shared.reap_at = wake
            with trio.CancelScope(deadline=wake) as scope:
                shared.reap_scope = scope
                await trio.sleep_forever()
            shared.reap_scope = None

