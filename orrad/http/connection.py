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
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from math import inf
from urllib.parse import parse_qs, unquote

import h11
import trio

from orrad.http.limits import ServerLimits
from orrad.http.messages import Handler, HTTPError, Request, Response, error_response

logger = logging.getLogger("orrad.http.server")

Route = Callable[[str, str], tuple[Handler, dict[str, str], int | None]]
# What h11's next_event() can return.
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]

# Connection phases. Only IDLE connections are closed at once by stop(); a timeout in HEAD or
# BODY is answered 408, in any other phase the connection just closes.
IDLE, HEAD, BODY, HANDLER, SEND, CLOSING = range(6)

_RECV_BYTES = 65536
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CLOSE = (b"connection", b"close")
_NO_LENGTH = frozenset({204, 304})  # RFC 9110 §8.6: no Content-Length on these

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
        "reap_at",
        "reap_scope",
        "route",
        "server_header",
        "stopping",
    )

    def __init__(self, limits: ServerLimits, route: Route, name: str, server_header: str) -> None:
        self.limits = limits
        self.route = route
        self.name = name
        self.server_header = server_header.encode("ascii")
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.stopping = False
        # When the reaper wakes next, and the scope it sleeps in, so that a connection whose
        # new deadline is earlier can wake it sooner.
        self.reap_at = inf
        self.reap_scope: trio.CancelScope | None = None

    def reschedule_reaper(self, deadline: float) -> None:
        self.reap_at = deadline
        if self.reap_scope is not None:
            self.reap_scope.deadline = deadline


class Connection:
    """One accepted socket, served by :meth:`run` in its own task."""

    __slots__ = (
        "client",
        "deadline",
        "expired",
        "h11",
        "phase",
        "scope",
        "shared",
        "stream",
    )

    def __init__(self, stream: trio.SocketStream, shared: Shared) -> None:
        self.stream = stream
        self.shared = shared
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=shared.limits.max_header_bytes
        )
        self.client = _peer(stream)
        self.scope = trio.CancelScope()
        self.phase = IDLE
        self.deadline = inf
        self.expired = False  # set by the reaper when it cancels us for a passed deadline

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
            if self.scope.cancel_called and self.phase in (HEAD, BODY):
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
            shared.connections.discard(self)
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
                    chunked = True  # h11 accepts nothing but "chunked"
            has_body = chunked or clen > 0

            # ---- route, then the body limit, before a single body byte is read
            try:
                handler, params, route_limit = shared.route(method, path)
            except HTTPError as exc:
                if has_body:
                    await self.send_early(exc.to_response())
                    return
                h.next_event()  # the EndOfMessage of a body-less request
                if not await self._send_response(exc.to_response(), requests, method):
                    return
                h.start_next_cycle()
                self.phase = IDLE
                self._arm(trio.current_time() + limits.keepalive_timeout_s)
                continue
            limit = limits.max_body_bytes if route_limit is None else route_limit
            if clen > limit:
                await self.send_early(too_large(limit))
                return

            # ---- body
            if has_body:
                self.phase = BODY
                try:
                    body = await self._read_body(limit)
                except h11.RemoteProtocolError as exc:
                    resp = error_response(exc.error_status_hint, "bad_request", str(exc))
                    await self.send_early(resp)
                    return
                if body is None:
                    return  # answered already, or the client went away
            else:
                h.next_event()  # the EndOfMessage h11 synthesises for a body-less request
                body = b""

            # ---- handler (no deadline: its duration is the application's business)
            self.deadline = inf
            if self.scope.cancel_called:
                return  # the reaper or stop() fired after our last read had completed
            self.phase = HANDLER
            request = Request(
                method, target, headers, body, self.client, params,
                path=path, query=parse_qs(qs, keep_blank_values=True) if qs else {},
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
            h.start_next_cycle()
            self.phase = IDLE
            self._arm(trio.current_time() + limits.keepalive_timeout_s)

    async def _read_body(self, limit: int) -> bytes | None:
        """Read the whole body (at most ``limit`` bytes) within ``body_timeout_s``.

        Returns ``None`` after answering 413 or when the client vanished. A body that is
        already buffered (the common case) is returned without arming a deadline.
        """
        h = self.h11
        chunks: list[bytes] = []
        size = 0
        armed = False
        while True:
            event = h.next_event()
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

    # -- writing -------------------------------------------------------------------------------

    def _head(self, resp: Response, close: bool) -> h11.Response:
        """The h11 response event, with the headers the server always adds."""
        status = resp.status
        headers = [(b"server", self.shared.server_header), (b"date", _http_date())]
        if status not in _NO_LENGTH:
            headers.append((b"content-length", str(len(resp.body)).encode("ascii")))
        for name, value in resp.headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if close:
            headers.append(_CLOSE)
        return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))

    async def _send_response(self, resp: Response, requests: int, method: str) -> bool:
        """Write a complete response; ``False`` means close the connection now.

        Adds ``Connection: close`` while the server stops or at the per-connection request
        cap (h11 adds it as well when the client asked for it).
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
        data = h.send(event)
        if resp.body and method != "HEAD" and resp.status not in _NO_LENGTH:
            data += h.send(h11.Data(data=resp.body))
        h.send(h11.EndOfMessage())
        self.phase = SEND
        self._arm(trio.current_time() + shared.limits.send_timeout_s)
        await self.stream.send_all(data)
        return h.our_state is not h11.MUST_CLOSE

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
                data = h.send(self._head(resp, close=True))
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
