"""One HTTP/1.1 connection: trio stream in, h11 events, handler, h11 bytes out.

Timeouts do not use a trio cancel scope per read: entering and leaving a deadline scope costs
more than parsing a small request. Instead each connection has one cancel scope for its whole
life and publishes the deadline of its current phase in :attr:`Connection.deadline`; the
server's single reaper task cancels connections whose deadline has passed (see
``HTTPServer._reap``). The phase then tells what to answer: a 408 when part of a request had
arrived, nothing when the connection was idle.

HTTP is parsed by h11 only; the one place raw bytes are read without h11 is the bounded
discard after an early error response, where they are thrown away unparsed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from math import inf
from urllib.parse import parse_qs, unquote

import h11
import trio

from orrad.http.limits import ServerLimits
from orrad.http.messages import Handler, HTTPError, Request, Response, error_response

# The server's logger, so that one logger name covers everything orrad.http.server runs.
logger = logging.getLogger("orrad.http.server")

Route = Callable[[str, str], tuple[Handler, dict[str, str], int | None]]
# What h11's next_event() can return.
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]

# Connection phases. Only IDLE connections are closed at once by stop(); a timeout in HEAD or
# BODY is answered 408, in any other phase the connection just closes.
IDLE, HEAD, BODY, HANDLER, SEND, CLOSING = range(6)

_RECV_BYTES = 65536
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CLOSE = ("connection", "close")
_NO_LENGTH = frozenset({204, 304})  # RFC 9110 §8.6: no Content-Length on these

# (second, "date: ...\r\n") shared by all servers in the process.
_fixed_cache: tuple[int, bytes] = (0, b"")


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """The client's address and its ``host:port`` for logs."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?", "?"
    host, port = addr[0], addr[1]
    return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length (validated by h11), or -1 when it has none (chunked)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return -1


def _head_problem(event: h11.Request, headers: Sequence[tuple[bytes, bytes]],
                  max_bytes: int) -> Response | None:
    """What is wrong with a request head that h11 accepted, as the answer to send.

    - Its size: h11 bounds a head only while it is incomplete, so a head that arrived in
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
        try:
            # Checked once here, because fixed_lines() writes it without h11 (see there).
            h11.Response(status_code=200, headers=[("server", server_header)])
        except (h11.LocalProtocolError, UnicodeEncodeError):
            raise ValueError(f"invalid server_header {server_header!r}") from None
        self.server_line = b"server: " + server_header.encode("ascii") + b"\r\n"
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
        progress: idle (new or kept alive) or with a request head still arriving. Only at
        a limit, so a scan of the open connections is fine."""
        victim: Connection | None = None
        for conn in self.connections:
            if conn.phase > HEAD or (host is not None and conn.host != host):
                continue
            if victim is None or conn.waiting_since < victim.waiting_since:
                victim = conn
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
        "h11",
        "host",
        "phase",
        "scope",
        "shared",
        "stream",
        "waiting_since",
    )

    def __init__(self, stream: trio.SocketStream, shared: Shared) -> None:
        self.stream = stream
        self.shared = shared
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=shared.limits.max_header_bytes
        )
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
        h = self.h11
        stream = self.stream
        requests = 0
        # The first request's head (idle time included) is due header_timeout_s after accept.
        self._arm(trio.current_time() + limits.header_timeout_s)
        while True:
            # ---- request head
            try:
                event: _Next = h.next_event()
                while event is h11.NEED_DATA:
                    if self.phase == IDLE and shared.stopping:
                        return
                    data = await stream.receive_some(_RECV_BYTES)
                    h.receive_data(data)
                    event = h.next_event()
                    if self.phase == IDLE and event is h11.NEED_DATA and data:
                        # Part of a head arrived; only now does the head deadline start for
                        # a kept-alive connection (the idle deadline covered the wait so far).
                        self.phase = HEAD
                        if requests:
                            self._arm(trio.current_time() + limits.header_timeout_s)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "too_large" if status == 431 else "bad_request"
                await self.send_early(error_response(status, code, str(exc)))
                return
            if type(event) is not h11.Request:
                return  # ConnectionClosed: the client is done with us
            requests += 1
            self.phase = HEAD

            method = event.method.decode("ascii")
            target = event.target.decode("latin-1")
            raw_headers = event.headers
            problem = _head_problem(event, raw_headers, limits.max_header_bytes)
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
                    has_body = type(h.next_event()) is not h11.EndOfMessage
                except h11.RemoteProtocolError:
                    has_body = True  # a broken body: answer the routing error all the same
                if has_body:
                    await self.send_early(exc.to_response())  # then close
                    return
                if not await self._send_response(exc.to_response(), requests, method):
                    return
                continue
            limit = limits.max_body_bytes if route_limit is None else route_limit

            # ---- body. h11 hands out what is already buffered without any I/O; in the
            # common case that is the whole body and needs no further checks.
            try:
                event = h.next_event()
                if type(event) is h11.EndOfMessage:
                    body = b""
                else:
                    chunks: list[bytes] = []
                    if type(event) is h11.Data and len(event.data) <= limit:
                        chunks.append(event.data)
                        event = h.next_event()
                    if type(event) is h11.EndOfMessage:
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
            except h11.RemoteProtocolError as exc:
                resp = error_response(exc.error_status_hint, "bad_request", str(exc))
                await self.send_early(resp)
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
        ``body_timeout_s``, starting with the already received ``chunks`` and the next h11
        ``event``.

        Returns ``None`` after answering 413 or when the client vanished. The deadline is
        armed only once the body has to be waited for.
        """
        h = self.h11
        size = sum(map(len, chunks))
        armed = False
        while True:
            kind = type(event)
            if kind is h11.Data:
                data = event.data  # type: ignore[union-attr]
                size += len(data)
                if size > limit:  # chunked bodies can only be checked as they arrive
                    await self.send_early(too_large(limit))
                    return None
                chunks.append(data)
            elif kind is h11.EndOfMessage:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif event is h11.NEED_DATA:
                if not armed:
                    armed = True
                    self._arm(trio.current_time() + self.shared.limits.body_timeout_s)
                    if h.client_is_waiting_for_100_continue:
                        # Only now that the body will be read (RFC 9110 §10.1.1).
                        await self.stream.send_all(
                            h.send(h11.InformationalResponse(status_code=100, headers=[]))
                        )
                h.receive_data(await self.stream.receive_some(_RECV_BYTES))
            else:
                return None  # ConnectionClosed
            event = h.next_event()

    # -- writing -------------------------------------------------------------------------------

    def _head(self, resp: Response, close: bool) -> h11.Response:
        """The h11 response event: the handler's headers plus Content-Length (and
        ``Connection: close`` when closing). Raises h11.LocalProtocolError or
        UnicodeEncodeError for headers h11 refuses."""
        status = resp.status
        # All str: h11 encodes (and validates) them anyway, so no per-header loop here.
        headers = [("content-length", str(len(resp.body)))] if status not in _NO_LENGTH else []
        headers += resp.headers
        if close:
            headers.append(_CLOSE)
        return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))

    def _serialize_head(self, event: h11.Response) -> bytes:
        """Serialise the head with h11, then add the server's own Server and Date lines.

        These two lines are the only bytes of a head not written by h11: their values are
        ours and checked once, and letting h11 re-validate them (twice per response, as it
        does) costs about a tenth of a small request's whole CPU time. h11's head always
        ends with the blank line, so they go right before it.
        """
        head = self.h11.send(event)
        return head[:-2] + self.shared.fixed_lines() + b"\r\n"

    async def _send_response(self, resp: Response, requests: int, method: str) -> bool:
        """Write a complete response and get ready for the next request on this connection.

        Adds ``Connection: close`` while the server stops or at the per-connection request
        cap (h11 adds it as well when the client asked for it). Returns ``False`` when the
        connection must close now. The keep-alive deadline is counted from before the send,
        so a client slow to read its response also has less time left to send another.
        """
        shared = self.shared
        h = self.h11
        close = shared.stopping or requests >= shared.limits.max_requests_per_connection
        try:
            event = self._head(resp, close)
        except (h11.LocalProtocolError, UnicodeEncodeError):
            # The handler produced headers h11 refuses (e.g. a newline in a value).
            logger.exception("%s: invalid response headers from handler", shared.name)
            resp = internal_error()
            event = self._head(resp, close)
        data = self._serialize_head(event)
        if resp.body and method != "HEAD" and resp.status not in _NO_LENGTH:
            data += h.send(h11.Data(data=resp.body))
        h.send(h11.EndOfMessage())
        self.phase = SEND
        now = trio.current_time()
        self._arm(now + shared.limits.send_timeout_s)
        await self.stream.send_all(data)
        if h.our_state is h11.MUST_CLOSE:
            return False
        h.start_next_cycle()
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
        h = self.h11
        limits = self.shared.limits
        stream = self.stream
        try:
            if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                data = self._serialize_head(self._head(resp, close=True))
                if resp.body:
                    data += h.send(h11.Data(data=resp.body))
                h.send(h11.EndOfMessage())
                with trio.move_on_after(limits.send_timeout_s) as scope:
                    await stream.send_all(data)
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
        except h11.LocalProtocolError:
            pass  # e.g. a body h11 will not frame (HEAD); closing says enough
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
