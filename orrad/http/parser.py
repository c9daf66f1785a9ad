"""Request parsing: llhttp (through httptools) behind a small pull interface.

llhttp parses at C speed but pushes: each ``feed`` runs callbacks for everything in the
bytes given, pipelined requests included. :class:`RequestParser` queues what the callbacks
report as events and hands them out one at a time, pausing after each request's end until
:meth:`RequestParser.start_next_cycle`, so the connection reads, routes and answers one
request at a time exactly as it would with a pull parser. It only ever feeds llhttp when
the queue is empty, so what is queued is bounded by one read.

What llhttp leaves to its caller, this module adds: the bound on a head that arrives in
pieces (431), the mandatory single ``Host`` of HTTP/1.1 (RFC 9112 §3.2), lower-cased
header names and values without surrounding whitespace, and the ``Expect: 100-continue``
bookkeeping.
"""

from __future__ import annotations

from collections import deque

import httptools

__all__ = [
    "CLOSED",
    "END",
    "NEED_DATA",
    "PAUSED",
    "Body",
    "Head",
    "ProtocolError",
    "RequestParser",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")
"""Nothing more can be parsed until more bytes arrive."""
PAUSED = _Marker("PAUSED")
"""This request has ended; call :meth:`RequestParser.start_next_cycle` before the next."""
END = _Marker("END")
"""The current request's body is complete."""
CLOSED = _Marker("CLOSED")
"""The client closed its side (between requests, or in the middle of one)."""


class Head:
    """A request line and headers (names lower-cased, values stripped, both bytes)."""

    __slots__ = ("headers", "keep_alive", "method", "target", "version")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 version: str, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive


class Body:
    """A piece of the current request's body (chunked framing already removed)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ProtocolError(Exception):
    """The client broke HTTP/1.1; ``status`` is the answer to give (400 or 431)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Event = Head | Body | _Marker


class _Failure:
    """Queued in place of the events a broken request would have produced."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


class RequestParser:
    """One connection's request parser (see the module docstring).

    ``max_head_bytes`` bounds a head still arriving: once more bytes than that were fed
    without its end, :meth:`next_event` raises :class:`ProtocolError` (431). A head that
    arrives complete in one read is measured by its caller from :class:`Head`.
    """

    __slots__ = (
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_head_bytes",
        "_parser",
        "_paused",
        "_stopped",
        "_url",
        "keep_alive",
        "waiting_for_continue",
    )

    def __init__(self, max_head_bytes: int) -> None:
        self._max_head_bytes = max_head_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event | _Failure] = deque()
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False  # a head has begun and not yet ended
        self._head_bytes = 0
        self._paused = False
        self._stopped = False  # after an error, an upgrade or the end of input: feed no more
        self.keep_alive = True
        """Whether the current request lets the connection be kept alive."""
        self.waiting_for_continue = False
        """The current request sent ``Expect: 100-continue`` and no body byte yet."""

    # -- llhttp's callbacks (called from inside feed_data) ----------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        headers = self._headers
        version = parser.get_http_version()
        if version == "1.1":
            hosts = sum(1 for name, _ in headers if name == b"host")
            if hosts != 1:
                raise _BadHost("missing Host header" if not hosts
                                   else "more than one Host header")
        keep_alive = bool(parser.should_keep_alive())
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        self._events.append(Head(parser.get_method(), target, headers, version, keep_alive))

    def on_body(self, data: bytes) -> None:
        self._events.append(Body(data))

    def on_message_complete(self) -> None:
        self._events.append(END)

    # -- the pull side ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse ``data`` (``b""``: the client closed its side)."""
        if self._stopped:
            return
        if not data:
            self._stopped = True
            self._events.append(CLOSED)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asked to switch protocols: it is answered, then the connection
            # closes (orrad speaks only HTTP/1.1); whatever followed its head is ignored.
            self._stopped = True
            for event in reversed(self._events):  # its answer says the connection closes
                if type(event) is Head:
                    event.keep_alive = False
                    break
            self._events.append(CLOSED)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            message = str(cause) if isinstance(cause, _BadHost) else str(exc)
            self._fail(ProtocolError(message))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(str(exc) or "malformed request"))
        else:
            if self._in_head:  # counted from the read in which the head began
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head_bytes:
                    self._fail(ProtocolError(
                        f"request head larger than {self._max_head_bytes} bytes", 431))

    def _fail(self, error: ProtocolError) -> None:
        self._stopped = True
        self._events.append(_Failure(error))

    def next_event(self) -> Event:
        """The next event of the current request, :data:`NEED_DATA` or :data:`PAUSED`.

        Raises:
            ProtocolError: the request is malformed (nothing more will be parsed).
        """
        if self._paused:
            return PAUSED
        events = self._events
        if not events:
            return NEED_DATA
        event = events.popleft()
        if type(event) is _Failure:
            events.appendleft(event)  # raised again if asked again
            raise event.error
        kind = type(event)
        if kind is Head:
            self.keep_alive = event.keep_alive  # type: ignore[union-attr]
            self.waiting_for_continue = any(
                name == b"expect" and value.lower() == b"100-continue"
                for name, value in event.headers  # type: ignore[union-attr]
            ) and event.version == "1.1"  # type: ignore[union-attr]
        elif kind is Body:
            self.waiting_for_continue = False
        elif event is END:
            self.waiting_for_continue = False
            self._paused = True
        return event  # type: ignore[return-value]

    def start_next_cycle(self) -> None:
        """Go on to the next request (after the current one was answered)."""
        self._paused = False
        self.keep_alive = True
        self.waiting_for_continue = False


class _BadHost(Exception):
    """Raised inside llhttp's callback (which wraps it); see :meth:`RequestParser.receive_data`."""
