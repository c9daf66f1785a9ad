"""One HTTP/1.1 connection: trio stream in, parser events, handler, response bytes out.

Timeouts do not use a trio cancel scope per read: entering and leaving a deadline scope costs
more than parsing a small request. Instead each connection has one cancel scope for its whole
life and publishes the deadline of its current phase in :attr:`Connection.deadline`; the
server's single reaper task cancels connections whose deadline has passed (see
``HTTPServer._reap``). The phase then tells what to answer: a 408 when part of a request had
arrived, nothing when the connection was idle.

Requests are parsed by llhttp (:mod:`orrad.http.parser`); the one place raw bytes are read
without it is the bounded discard after an early error response, where they are thrown away
unparsed. Responses are written here: a status line, the handler's headers (checked, see
:func:`header_line`), ``Content-Length``, ``Server`` and ``Date``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from math import inf
from urllib.parse import parse_qs, unquote

import trio

from orrad.http.limits import ServerLimits
from orrad.http.messages import Handler, HTTPError, Request, Response, error_response
from orrad.http.parser import END, NEED_DATA, Body, Head, ProtocolError, RequestParser
from orrad.httpfields import InvalidField, LineCache, field_line, valid_value

# The server's logger, so that one logger name covers everything orrad.http.server runs.
logger = logging.getLogger("orrad.http.server")

Route = Callable[[str, str], tuple[Handler, dict[str, str], int | None]]
_Next = Head | Body | object  # what RequestParser.next_event() returns

# Connection phases. Only IDLE connections are closed at once by stop(); a timeout in HEAD or
# BODY is answered 408, in any other phase the connection just closes.
IDLE, HEAD, BODY, HANDLER, SEND, CLOSING = range(6)

_RECV_BYTES = 65536
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE_LINE = b"connection: close\r\n"
_NO_LENGTH = frozenset({204, 304})  # RFC 9110 §8.6: no Content-Length on these
# The server writes these itself; a handler setting one would frame the response wrongly.
_SERVER_OWNED = frozenset({"content-length", "transfer-encoding", "connection"})

# (second, "date: ...\r\n") shared by all servers in the process.
_fixed_cache: tuple[int, bytes] = (0, b"")


def header_line(name: str, value: str) -> bytes:
    """A handler's header as a line (:func:`orrad.httpfields.field_line`).

    Raises:
        InvalidField: it cannot be written, or it is one the server sets itself.
    """
    if name.lower() in _SERVER_OWNED:
        raise InvalidField(f"response header {name!r} is the server's to set")
    return field_line(name, value)


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 200 <= status <= 999:
            raise InvalidField(f"invalid response status {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """The client's address and its ``host:port`` for logs."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?", "?"
    host, port = addr[0], addr[1]
    return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length (validated by llhttp), or -1 when it has none."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return -1


def _head_problem(event: Head, headers: Sequence[tuple[bytes, bytes]],
                  max_bytes: int) -> Response | None:
    """What is wrong with a request head that the parser accepted, as the answer to send.

    - Its size: the parser bounds a head only while it is incomplete, so a head that arrived in
      one read could be of any size; the bound is applied to what was received (431).
    - Both ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 §6.1: a smuggling
      attempt; answered 400 and the connection closed, so nothing after it is read).
    """
    size = len(event.method) + len(event.target) + 12
    lengths = codings = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"content-length":
            lengths += 1
        elif name == b"transfer-encoding":
            codings += 1
    if size > max_bytes:
        return error_response(431, "too_large",
                              f"request head larger than {max_bytes} bytes")
    if lengths and codings:
        return error_response(400, "bad_request",
                              "both Content-Length and Transfer-Encoding: refused")
    return None


def too_large(limit: int) -> Response:
    return error_response(413, "too_large", f"request body larger than {limit} bytes")


def internal_error() -> Response:
    return error_response(500, "internal", "internal server error")


class Shared:
    """State the server and all its connections share (single-threaded: no locking)."""

    __slots__ = (
        "connections",
        "header_lines",
        "in_flight",
        "limits",
        "name",
        "per_host",
        "reap_at",
        "reap_scope",
        "route",
        "server_line",
        "stopping",
    )

    def __init__(self, limits: ServerLimits, route: Route, name: str, server_header: str) -> None:
        self.limits = limits
        self.route = route
        self.name = name
        if not valid_value(server_header):
            raise ValueError(f"invalid server_header {server_header!r}")
        self.server_line = b"server: " + server_header.encode("ascii") + b"\r\n"
        self.header_lines = LineCache(header_line)  # most responses repeat a few
        self.connections: set[Connection] = set()
        self.per_host: dict[str, int] = {}  # open connections by client address
        self.in_flight = 0
        self.stopping = False
        # When the reaper wakes next, and the scope it sleeps in, so that a connection whose
        # new deadline is earlier can wake it sooner.
        self.reap_at = inf
        self.reap_scope: trio.CancelScope | None = None

    @staticmethod
    def _date_line(now: int) -> bytes:
        return b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"

    def fixed_lines(self) -> bytes:
        """The ``Server`` and ``Date`` header lines (CRLF-terminated), rebuilt once a second."""
        global _fixed_cache
        now = int(time.time())
        if _fixed_cache[0] != now:
            _fixed_cache = (now, self._date_line(now))
        return self.server_line + _fixed_cache[1]

    def admit(self, conn: Connection) -> bool:
        """Register a new connection, making room for it if the server or its client's
        address is at its limit; ``False`` (it must be refused) when no room can be made."""
        limits, host = self.limits, conn.host
        if self.per_host.get(host, 0) >= limits.max_connections_per_client:
            victim = self._longest_waiting(host)
            if victim is None:
                return False
            victim.evict()
        if len(self.connections) >= limits.max_connections:
            victim = self._longest_waiting(None)
            if victim is None:
                return False
            victim.evict()
        self.connections.add(conn)
        self.per_host[host] = self.per_host.get(host, 0) + 1
        return True

    def forget(self, conn: Connection) -> None:
        """Unregister a connection (idempotent)."""
        if conn in self.connections:
            self.connections.remove(conn)
            left = self.per_host[conn.host] - 1
            if left:
                self.per_host[conn.host] = left
            else:
                del self.per_host[conn.host]

    def _longest_waiting(self, host: str | None) -> Connection | None:
        """The connection (of ``host``, or any) that has waited longest with no request in
        progress, idle (new or kept alive) or with a request head still arriving, if it has
        waited at least ``evict_after_s``. Only at a limit, so a scan of the open
        connections is fine."""
        victim: Connection | None = None
        for conn in self.connections:
            if conn.phase > HEAD or (host is not None and conn.host != host):
                continue
            if victim is None or conn.waiting_since < victim.waiting_since:
                victim = conn
        if victim is None or (trio.current_time() - victim.waiting_since
                              < self.limits.evict_after_s):
            return None  # even the longest-waiting one is in use: refuse the newcomer
        return victim

    def reschedule_reaper(self, deadline: float) -> None:
        self.reap_at = deadline
        if self.reap_scope is not None:
            self.reap_scope.deadline = deadline


class Connection:
    """One accepted socket, served by :meth:`run` in its own task."""

    __slots__ = (
        "client",
        "deadline",
        "evicted",
        "expired",
        "host",
        "parser",
        "phase",
        "responded",
        "scope",
        "shared",
        "stream",
        "waiting_since",
    )

    def __init__(self, stream: trio.SocketStream, shared: Shared) -> None:
        self.stream = stream
        self.shared = shared
        self.parser = RequestParser(shared.limits.max_header_bytes)
        self.responded = False  # the current request has been answered
        self.host, self.client = _peer(stream)
        self.scope = trio.CancelScope()
        self.phase = IDLE
        # Since when no request has been in progress (accept, or the last response sent).
        self.waiting_since = trio.current_time()
        self.deadline = inf
        self.expired = False  # set by the reaper when it cancels us for a passed deadline
        self.evicted = False  # closed to make room for a newcomer (see Shared.admit)

    def evict(self) -> None:
        """Close this waiting connection to make room: unregistered at once, so its slot is
        free before its task even runs again; nothing is answered (nothing was asked, or
        the head has been dribbling in for longer than any other's)."""
        self.evicted = True
        self.shared.forget(self)
        self.scope.cancel()

    def _arm(self, deadline: float) -> None:
        """Publish the current phase's deadline for the reaper."""
        self.deadline = deadline
        if deadline < self.shared.reap_at:
            self.shared.reschedule_reaper(deadline)

    async def run(self) -> None:
        """Serve requests until either side closes; nothing but trio.Cancelled escapes."""
        shared = self.shared
        try:
            with self.scope:
                await self._serve()
            if self.scope.cancel_called and self.phase in (HEAD, BODY) and not self.evicted:
                # Part of a request arrived: tell the client why we give up on it.
                if self.expired:
                    what = "request head" if self.phase == HEAD else "request body"
                    resp = error_response(408, "timeout", f"{what} not received in time")
                else:
                    resp = error_response(503, "unavailable", "server shutting down")
                await self.send_early(resp)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer reset or vanished; there is nobody left to answer
        except Exception:
            logger.exception("%s: connection from %s failed", shared.name, self.client)
        finally:
            shared.forget(self)
            await trio.aclose_forcefully(self.stream)

    async def _serve(self) -> None:
        shared = self.shared
        limits = shared.limits
        parser = self.parser
        stream = self.stream
        requests = 0
        # The first request's head (idle time included) is due header_timeout_s after accept.
        self._arm(trio.current_time() + limits.header_timeout_s)
        while True:
            # ---- request head
            try:
                event: _Next = parser.next_event()
                while event is NEED_DATA:
                    if self.phase == IDLE and shared.stopping:
                        return
                    data = await stream.receive_some(_RECV_BYTES)
                    parser.receive_data(data)
                    event = parser.next_event()
                    if self.phase == IDLE and event is NEED_DATA and data:
                        # Part of a head arrived; only now does the head deadline start for
                        # a kept-alive connection (the idle deadline covered the wait so far).
                        self.phase = HEAD
                        if requests:
                            self._arm(trio.current_time() + limits.header_timeout_s)
            except ProtocolError as exc:
                code = "too_large" if exc.status == 431 else "bad_request"
                await self.send_early(error_response(exc.status, code, str(exc)))
                return
            if type(event) is not Head:
                return  # CLOSED: the client is done with us
            head = event
            requests += 1
            self.phase = HEAD

            method = head.method.decode("ascii")
            target = head.target.decode("latin-1")
            raw_headers = head.headers
            problem = _head_problem(head, raw_headers, limits.max_header_bytes)
            if problem is not None:
                await self.send_early(problem)  # then close: never read past a bad head
                return
            if target[:1] != "/" and target.startswith(("http://", "https://")):
                # Absolute form (RFC 9112 §3.2.2: a server MUST accept it): route on its
                # path and query.
                target = "/" + target.split("://", 1)[1].partition("/")[2]
            raw_path, _, qs = target.partition("?")
            path = unquote(raw_path) if "%" in raw_path else raw_path

            # ---- route: a 404/405 is answered without reading any body
            try:
                handler, params, route_limit = shared.route(method, path)
            except HTTPError as exc:
                try:
                    has_body = parser.next_event() is not END
                except ProtocolError:
                    has_body = True  # a broken body: answer the routing error all the same
                if has_body:
                    await self.send_early(exc.to_response())  # then close
                    return
                if not await self._send_response(exc.to_response(), requests, method):
                    return
                continue
            limit = limits.max_body_bytes if route_limit is None else route_limit

            # ---- body. The parser hands out what is already buffered without any I/O; in
            # the common case that is the whole body and needs no further checks.
            try:
                event = parser.next_event()
                if event is END:
                    body = b""
                else:
                    chunks: list[bytes] = []
                    if type(event) is Body and len(event.data) <= limit:
                        chunks.append(event.data)
                        event = parser.next_event()
                    if event is END:
                        body = chunks[0]
                    else:
                        # More must be read: check the announced length first, so that an
                        # oversized body is refused before a single further byte is read.
                        if _content_length(raw_headers) > limit:
                            await self.send_early(too_large(limit))
                            return
                        self.phase = BODY
                        read = await self._read_body(limit, chunks, event)
                        if read is None:
                            return  # answered already, or the client went away
                        body = read
            except ProtocolError as exc:
                await self.send_early(error_response(exc.status, "bad_request", str(exc)))
                return

            # ---- handler (no deadline: its duration is the application's business)
            self.deadline = inf
            if self.scope.cancel_called:
                return  # the reaper or stop() fired after our last read had completed
            self.phase = HANDLER
            request = Request(
                method, target, None, body, self.client, params, path=path,
                query=parse_qs(qs, keep_blank_values=True) if qs else {}, raw_headers=raw_headers,
            )
            shared.in_flight += 1
            try:
                resp = await handler(request)
            except HTTPError as exc:
                resp = exc.to_response()
            except Exception:
                logger.exception("%s: handler for %s %s failed", shared.name, method, path)
                resp = internal_error()
            finally:
                shared.in_flight -= 1

            if not await self._send_response(resp, requests, method):
                return

    async def _read_body(self, limit: int, chunks: list[bytes], event: _Next) -> bytes | None:
        """Read the rest of the body (at most ``limit`` bytes in all) within
        ``body_timeout_s``, starting with the already received ``chunks`` and the next
        parser ``event``.

        Returns ``None`` after answering 413 or when the client vanished. The deadline is
        armed only once the body has to be waited for.

        Raises:
            ProtocolError: the body is malformed (bad chunked framing, say).
        """
        parser = self.parser
        size = sum(map(len, chunks))
        armed = False
        while True:
            kind = type(event)
            if kind is Body:
                data = event.data  # type: ignore[union-attr]
                size += len(data)
                if size > limit:  # chunked bodies can only be checked as they arrive
                    await self.send_early(too_large(limit))
                    return None
                chunks.append(data)
            elif event is END:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif event is NEED_DATA:
                if not armed:
                    armed = True
                    self._arm(trio.current_time() + self.shared.limits.body_timeout_s)
                    if parser.waiting_for_continue:
                        # Only now that the body will be read (RFC 9110 §10.1.1).
                        parser.waiting_for_continue = False
                        await self.stream.send_all(_CONTINUE)
                parser.receive_data(await self.stream.receive_some(_RECV_BYTES))
            else:
                return None  # CLOSED
            event = parser.next_event()

    # -- writing -------------------------------------------------------------------------------

    def _send_now(self, data: bytes) -> int:
        """Write what the socket takes at once (the whole of a response that fits its send
        buffer, normally) without a trip through the scheduler; 0 when it takes nothing or
        fails, and ``send_all`` then waits, or raises the error in trio's terms.

        trio's ``send_all`` always yields; the next ``receive_some`` of this loop is the
        checkpoint instead (it yields even when the next request is already there).
        """
        try:
            return os.write(self.stream.socket.fileno(), data)
        except OSError:
            return 0

    def _encode(self, resp: Response, close: bool, method: str) -> bytes:
        """The whole response: status line, ``Content-Length``, the handler's headers,
        ``Connection: close`` when closing, ``Server`` and ``Date``, then the body (none
        for HEAD, 204 and 304).

        Raises:
            InvalidField: the handler's status or headers cannot be written.
        """
        status = resp.status
        body = resp.body
        head = _status_line(status)
        if status not in _NO_LENGTH:
            head += b"content-length: %d\r\n" % len(body)
        if resp.headers:
            line = self.shared.header_lines.line
            head += b"".join([line(name, value) for name, value in resp.headers])
        if close:
            head += _CLOSE_LINE
        head += self.shared.fixed_lines() + b"\r\n"
        if body and method != "HEAD" and status not in _NO_LENGTH:
            return head + body
        return head

    def _encode_or_500(self, resp: Response, close: bool, method: str) -> bytes:
        try:
            return self._encode(resp, close, method)
        except InvalidField:
            # The handler produced a status or headers that cannot be sent (e.g. a newline
            # in a value): it is the handler's bug, answered as one.
            logger.exception("%s: invalid response from handler", self.shared.name)
            return self._encode(internal_error(), close, method)

    async def _send_response(self, resp: Response, requests: int, method: str) -> bool:
        """Write a complete response and get ready for the next request on this connection.

        Adds ``Connection: close`` while the server stops, at the per-connection request
        cap, or when the client did not ask to keep the connection. Returns ``False`` when
        the connection must close now. The keep-alive deadline is counted from before the
        send, so a client slow to read its response also has less time left to send another.
        """
        shared = self.shared
        parser = self.parser
        close = (shared.stopping or not parser.keep_alive
                 or requests >= shared.limits.max_requests_per_connection)
        data = self._encode_or_500(resp, close, method)
        self.responded = True
        self.phase = SEND
        now = trio.current_time()
        self._arm(now + shared.limits.send_timeout_s)
        sent = self._send_now(data)
        if sent < len(data):
            await self.stream.send_all(data[sent:] if sent else data)
        if close:
            return False
        parser.start_next_cycle()
        self.responded = False
        self.phase = IDLE
        self.waiting_since = now
        self._arm(now + shared.limits.keepalive_timeout_s)
        return True

    async def send_early(self, resp: Response) -> None:
        """Answer before (or instead of) reading the request, then discard, then return.

        Used for 400/408/413/431/503 and for 404/405 with a body; the caller closes. The
        response says ``Connection: close``. Afterwards whatever the client still sends is
        read and thrown away for at most ``discard_timeout_s`` / ``discard_max_bytes``,
        because closing a socket with unread data resets the connection, and the reset can
        destroy our answer before the client has read it. Rare path: it uses its own trio
        timeouts rather than the reaper.
        """
        self.phase = CLOSING
        self.deadline = inf
        limits = self.shared.limits
        stream = self.stream
        try:
            if not self.responded:
                self.responded = True
                with trio.move_on_after(limits.send_timeout_s) as scope:
                    await stream.send_all(self._encode_or_500(resp, True, "POST"))
                if scope.cancelled_caught:
                    return
            await stream.send_eof()  # the client sees the end of our answer right away
            with trio.move_on_after(limits.discard_timeout_s):
                remaining = limits.discard_max_bytes
                while remaining > 0:
                    chunk = await stream.receive_some(min(_RECV_BYTES, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
