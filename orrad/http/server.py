"""The connection loop: trio sockets in, h11 events, handlers, h11 bytes out.

One task per connection, all in a nursery the server owns; no other tasks per request. Every
limit in :class:`ServerLimits` is enforced here, before the handler ever sees the request.
HTTP is parsed by h11 only; the one place raw bytes are read without h11 is the bounded
discard after an early error response, where the bytes are thrown away unparsed.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

import h11
import trio

from orrad.http.messages import Handler, HTTPError, Request, Response, error_response
from orrad.http.routing import Router

__all__ = ["HTTPServer", "ServerLimits", "parse_listen"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 65536
# Accept failures that mean "out of resources right now": back off and retry, as
# trio.serve_listeners does, instead of killing the listener.
_ACCEPT_RETRY_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED}
)
_MAX_REFUSING = 64  # concurrent "503, go away" tasks; beyond this, refused sockets just close
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CLOSE = (b"connection", b"close")
_NO_LENGTH = frozenset({204, 304})
# What h11's next_event() can return.
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


@dataclass(frozen=True)
class ServerLimits:
    """Every bound the server enforces; the defaults suit a public webhook endpoint."""

    max_header_bytes: int = 16384
    """Request line plus headers (h11's ``max_incomplete_event_size``); beyond it: 431."""
    max_body_bytes: int = 1_048_576
    """Body limit for routes that set none; beyond it: 413 ``too_large``."""
    header_timeout_s: float = 10.0
    """Request line and headers must arrive within this (from accept, or from the first byte
    of a later request on a kept-alive connection); else the connection closes (408 if part
    of a request head had arrived)."""
    body_timeout_s: float = 10.0
    """The whole body must arrive within this after the head; else 408 ``timeout``."""
    keepalive_timeout_s: float = 5.0
    """Idle time allowed between requests on a kept-alive connection."""
    max_connections: int = 1024
    """Open connections; beyond it, new ones get 503 ``unavailable`` and are closed."""
    max_requests_per_connection: int = 1000
    """The response to the last allowed request carries ``Connection: close``."""
    discard_timeout_s: float = 2.0
    """After an early error (e.g. 413), unread body is discarded for at most this long..."""
    discard_max_bytes: int = 16 * 1024 * 1024
    """...or at most this many bytes; then the connection closes."""
    drain_timeout_s: float = 10.0
    """On :meth:`HTTPServer.stop`, in-flight requests get this long before being cancelled."""
    send_timeout_s: float = 10.0
    """Writing one response must finish within this (slow readers are dropped)."""


_DEFAULT_LIMITS = ServerLimits()


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` into ``(host, port)``.

    IPv6 hosts go in brackets (``"[::1]:8470"``, returned as ``("::1", 8470)``); port 0 asks
    the system for a free port.

    Raises:
        ValueError: not ``HOST:PORT``, an empty host, unbracketed IPv6, or a port outside
            0-65535.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        raise ValueError(f"invalid listen address {listen!r}: expected HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"invalid listen address {listen!r}: bad [IPv6] host")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(
            f"invalid listen address {listen!r}: put IPv6 addresses in brackets, e.g. [::1]:80"
        )
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid listen address {listen!r}: expected HOST:PORT")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f"invalid listen address {listen!r}: port must be a number from 0 to 65535"
        )
    return host, int(port_text)


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The ``Date`` header value, formatted at most once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Conn:
    """Per-connection state the server needs to see from outside the connection task."""

    __slots__ = ("client", "h11", "idle_scope", "stream")

    def __init__(self, stream: trio.SocketStream, max_header_bytes: int) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.client = _peer(stream)
        # Set while waiting for the first byte of the next request, so stop() can close
        # idle connections at once instead of waiting for their keep-alive timeout.
        self.idle_scope: trio.CancelScope | None = None


class HTTPServer:
    """A trio-native HTTP/1.1 server over h11 with strict limits and graceful drain.

    ``handler`` is a :class:`Router` (per-route body limits, 404/405) or a single async
    handler answering every request. Each instance serves once: call :meth:`serve` in a
    nursery (``await nursery.start(server.serve, "127.0.0.1:0")`` returns the bound
    address), and end it with :meth:`stop` (graceful) or by cancelling it (immediate).
    """

    def __init__(
        self,
        handler: Router | Handler,
        *,
        limits: ServerLimits = _DEFAULT_LIMITS,
        name: str = "http",
        server_header: str = "orrad",
    ) -> None:
        self._router = handler if isinstance(handler, Router) else None
        self._handler: Handler | None = None if isinstance(handler, Router) else handler
        self._limits = limits
        self._name = name
        self._server_header = server_header.encode("ascii")
        self._connections: set[_Conn] = set()
        self._refusing = 0
        self._in_flight = 0
        self._started = False
        self._stopping = False
        self._done = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._listeners: list[trio.SocketListener] = []
        self.bound: tuple[str, int] | None = None
        """The address actually listened on, once :meth:`serve` has started."""

    @property
    def active_connections(self) -> int:
        """Connections currently open (refused ones not counted)."""
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Requests whose handler is running right now."""
        return self._in_flight

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self,
        listen: str,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``listen`` (``"HOST:PORT"``, port 0 allowed) and serve.

        Calls ``task_status.started((host, port))`` with the bound address once listening.
        Returns after :meth:`stop` has drained every connection; cancelling it closes all
        connections at once.

        Raises:
            ValueError: ``listen`` is malformed (see :func:`parse_listen`).
            OSError: the address cannot be bound.
            RuntimeError: the server already served or was stopped.
        """
        if self._started or self._stopping:
            raise RuntimeError(f"{self._name}: an HTTPServer serves only once")
        self._started = True
        try:
            host, port = parse_listen(listen)
            listeners = await trio.open_tcp_listeners(port, host=host)
            if port == 0:
                # A name like "localhost" can resolve to several addresses, and each would
                # get its own random port; serve the first one only, so "bound" is the truth.
                for extra in listeners[1:]:
                    extra.socket.close()
                del listeners[1:]
            self._listeners = listeners
            sockname = listeners[0].socket.getsockname()
            self.bound = (sockname[0], sockname[1])
            async with trio.open_nursery() as conn_nursery:
                async with trio.open_nursery() as accept_nursery:
                    self._accept_scope = accept_nursery.cancel_scope
                    if self._stopping:  # stop() ran while we were binding
                        accept_nursery.cancel_scope.cancel()
                    for listener in listeners:
                        accept_nursery.start_soon(self._accept_loop, listener, conn_nursery)
                    task_status.started(self.bound)
                # Only stop() ends the accept loops; from here on, in-flight requests have
                # drain_timeout_s to finish before the connection nursery cancels them.
                conn_nursery.cancel_scope.deadline = (
                    trio.current_time() + self._limits.drain_timeout_s
                )
        finally:
            for listener in self._listeners:
                listener.socket.close()
            self._done.set()

    async def stop(self) -> None:
        """Drain gracefully and return once every connection is closed.

        Stops accepting at once (new connections are refused), closes idle connections, lets
        in-flight requests finish with ``Connection: close`` for up to ``drain_timeout_s``,
        then cancels the rest. Idempotent; concurrent callers all wait for the drain. Does
        nothing but mark the server stopped if :meth:`serve` never ran.
        """
        if not self._stopping:
            self._stopping = True
            if self._accept_scope is not None:
                self._accept_scope.cancel()
            # Close the listening sockets now rather than when the accept tasks next run, so
            # that a connect() made after stop() began is refused, never left in the backlog.
            for listener in self._listeners:
                listener.socket.close()
            for conn in self._connections:
                if conn.idle_scope is not None:
                    conn.idle_scope.cancel()
        if self._started:
            await self._done.wait()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        limit = self._limits.max_connections
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
            if len(self._connections) >= limit:
                if self._refusing < _MAX_REFUSING:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                else:
                    stream.socket.close()
                continue
            # Registered before the task starts so the connection cap cannot be overshot by
            # a burst of accepts.
            conn = _Conn(stream, self._limits.max_header_bytes)
            self._connections.add(conn)
            nursery.start_soon(self._run_connection, conn)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Answer 503 without reading the request, then close (over max_connections)."""
        conn = _Conn(stream, self._limits.max_header_bytes)
        try:
            resp = error_response(503, "unavailable", "too many connections")
            await self._send_early(conn, resp)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _run_connection(self, conn: _Conn) -> None:
        """Serve one connection; nothing that goes wrong here reaches the server."""
        try:
            await self._serve_connection(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer reset or vanished; there is nobody left to answer
        except Exception:
            logger.exception("%s: connection from %s failed", self._name, conn.client)
        finally:
            self._connections.discard(conn)
            await trio.aclose_forcefully(conn.stream)

    # -- one connection ------------------------------------------------------------------------

    async def _serve_connection(self, conn: _Conn) -> None:
        limits = self._limits
        h = conn.h11
        stream = conn.stream
        requests = 0
        while True:
            # ---- request head
            try:
                event: _Next | None = h.next_event()
                if event is h11.NEED_DATA:
                    event = await self._read_head(conn, first=requests == 0)
                    if event is None:
                        return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "too_large" if status == 431 else "bad_request"
                await self._send_early(conn, error_response(status, code, str(exc)))
                return
            if type(event) is not h11.Request:
                return  # ConnectionClosed: the client is done with us
            requests += 1

            method = event.method.decode("ascii")
            target = event.target.decode("latin-1")
            raw_path, _, qs = target.partition("?")
            path = unquote(raw_path) if "%" in raw_path else raw_path
            clen = -1
            chunked = False
            headers: list[tuple[str, str]] = []
            for bname, bvalue in event.headers:
                name = bname.decode("latin-1")
                value = bvalue.decode("latin-1")
                headers.append((name, value))
                if name == "content-length":
                    clen = int(value)  # h11 has validated it
                elif name == "transfer-encoding":
                    chunked = True  # h11 accepts only "chunked"
            has_body = chunked or clen > 0

            # ---- route, then check the body limit before reading a single body byte
            params: dict[str, str]
            route_limit: int | None
            if self._router is not None:
                try:
                    handler, params, route_limit = self._router.route(method, path)
                except HTTPError as exc:
                    if has_body:
                        await self._send_early(conn, exc.to_response())
                        return
                    if not await self._send_response(conn, exc.to_response(), requests, method):
                        return
                    h.next_event()  # EndOfMessage of the body-less request
                    h.start_next_cycle()
                    continue
            else:
                assert self._handler is not None
                handler, params, route_limit = self._handler, {}, None
            limit = limits.max_body_bytes if route_limit is None else route_limit
            if clen > limit:
                await self._send_early(conn, _too_large(limit))
                return

            # ---- body
            body = b""
            if has_body:
                if h.client_is_waiting_for_100_continue:
                    # Only now that the body will really be read: see RFC 9110 §10.1.1.
                    await stream.send_all(
                        h.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                try:
                    read = await self._read_body(conn, limit)
                except h11.RemoteProtocolError as exc:
                    resp = error_response(exc.error_status_hint, "bad_request", str(exc))
                    await self._send_early(conn, resp)
                    return
                if read is None:
                    return  # an error was answered, or the client went away
                body = read
            else:
                h.next_event()  # the EndOfMessage h11 synthesises for a body-less request

            # ---- handler
            request = Request(
                method, target, headers, body, conn.client, params,
                path=path, query=parse_qs(qs, keep_blank_values=True) if qs else {},
            )
            self._in_flight += 1
            try:
                resp = await handler(request)
            except HTTPError as exc:
                resp = exc.to_response()
            except Exception:
                logger.exception("%s: handler for %s %s failed", self._name, method, path)
                resp = _internal()
            finally:
                self._in_flight -= 1

            if not await self._send_response(conn, resp, requests, method):
                return
            h.start_next_cycle()

    async def _read_head(self, conn: _Conn, *, first: bool) -> _Next | None:
        """Receive until h11 has a request head; ``None`` means close the connection.

        Waiting for the first byte is the idle phase (``keepalive_timeout_s`` between
        requests, ``header_timeout_s`` on a fresh connection) and is cut short by stop();
        once a byte has arrived, the head must be complete within ``header_timeout_s``.
        """
        h = conn.h11
        stream = conn.stream
        limits = self._limits
        now = trio.current_time()
        head_deadline = now + limits.header_timeout_s
        if not h.trailing_data[0]:
            if self._stopping:
                return None
            idle = limits.header_timeout_s if first else limits.keepalive_timeout_s
            with trio.CancelScope(deadline=now + idle) as scope:
                conn.idle_scope = scope
                data = await stream.receive_some(_RECV_BYTES)
            conn.idle_scope = None
            if scope.cancelled_caught:
                return None  # idle too long, or stop() closes idle connections
            h.receive_data(data)
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            if not first:
                head_deadline = trio.current_time() + limits.header_timeout_s
        with trio.move_on_at(head_deadline):
            while True:
                h.receive_data(await stream.receive_some(_RECV_BYTES))
                event = h.next_event()
                if event is not h11.NEED_DATA:
                    return event
        await self._send_early(conn, error_response(408, "timeout", "request head too slow"))
        return None

    async def _read_body(self, conn: _Conn, limit: int) -> bytes | None:
        """Read the whole body within ``body_timeout_s``, at most ``limit`` bytes.

        Returns ``None`` after answering 408/413 (or when the client vanished); the caller
        then closes.
        """
        h = conn.h11
        chunks: list[bytes] = []
        size = 0
        deadline: float | None = None
        while True:
            event = h.next_event()
            kind = type(event)
            if kind is h11.Data:
                data = event.data  # type: ignore[union-attr]
                size += len(data)
                if size > limit:  # chunked bodies are only checked as they arrive
                    await self._send_early(conn, _too_large(limit))
                    return None
                chunks.append(data)
            elif kind is h11.EndOfMessage:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif event is h11.NEED_DATA:
                if deadline is None:
                    deadline = trio.current_time() + self._limits.body_timeout_s
                with trio.move_on_at(deadline):
                    h.receive_data(await conn.stream.receive_some(_RECV_BYTES))
                    continue
                resp = error_response(408, "timeout", "request body not received in time")
                await self._send_early(conn, resp)
                return None
            else:
                return None  # ConnectionClosed

    # -- writing -------------------------------------------------------------------------------

    def _head(self, resp: Response, close: bool) -> h11.Response:
        """The h11 response event, with the headers the server always adds."""
        status = resp.status
        headers: list[tuple[bytes, bytes]] = [
            (b"server", self._server_header),
            (b"date", _http_date()),
        ]
        if status not in _NO_LENGTH:  # RFC 9110 §8.6: no Content-Length on 204/304
            headers.append((b"content-length", str(len(resp.body)).encode("ascii")))
        for name, value in resp.headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if close:
            headers.append(_CLOSE)
        return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))

    async def _send_response(
        self, conn: _Conn, resp: Response, requests: int, method: str
    ) -> bool:
        """Write a complete response; ``False`` means close the connection now.

        Adds ``Connection: close`` while stopping or at the per-connection request cap (h11
        adds it too when the client asked for it).
        """
        h = conn.h11
        close = self._stopping or requests >= self._limits.max_requests_per_connection
        try:
            event = self._head(resp, close)
        except (h11.LocalProtocolError, UnicodeEncodeError):
            # The handler produced headers h11 refuses (e.g. a newline in a value).
            logger.exception("%s: invalid response headers from handler", self._name)
            resp = _internal()
            event = self._head(resp, close)
        data = h.send(event)
        if resp.body and method != "HEAD" and resp.status not in _NO_LENGTH:
            data += h.send(h11.Data(data=resp.body))
        h.send(h11.EndOfMessage())
        with trio.move_on_after(self._limits.send_timeout_s):
            await conn.stream.send_all(data)
            return h.our_state is not h11.MUST_CLOSE
        return False  # the client does not read its response: drop it

    async def _send_early(self, conn: _Conn, resp: Response) -> None:
        """Answer before (or instead of) reading the request, then discard and close.

        Used for 400/408/413/431 and for 404/405 with a body. The response says
        ``Connection: close``; afterwards whatever the client still sends is read and thrown
        away for at most ``discard_timeout_s`` / ``discard_max_bytes``, so that closing a
        socket with unread data does not reset the connection before the client has read the
        answer. The caller closes the connection.
        """
        h = conn.h11
        limits = self._limits
        if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            data = h.send(self._head(resp, close=True))
            if resp.body:
                data += h.send(h11.Data(data=resp.body))
            h.send(h11.EndOfMessage())
            with trio.move_on_after(limits.send_timeout_s) as scope:
                await conn.stream.send_all(data)
            if scope.cancelled_caught:
                return
        stream = conn.stream
        try:
            await stream.send_eof()  # the client sees the end of our answer right away
            with trio.move_on_after(limits.discard_timeout_s):
                remaining = limits.discard_max_bytes
                while remaining > 0:
                    data = await stream.receive_some(min(_RECV_BYTES, remaining))
                    if not data:
                        break
                    remaining -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _too_large(limit: int) -> Response:
    return error_response(413, "too_large", f"request body larger than {limit} bytes")


def _internal() -> Response:
    return error_response(500, "internal", "internal server error")
