"""A lean HTTP/1.1 client: trio streams, llhttp (through httptools) to read answers, a pool
of kept-alive connections per origin. The providers' client and the federation's relays
use it: both make one call per message.

Through ``httpx`` (client, transport, httpcore's pool and models) a small JSON POST cost
about 440 µs of CPU on this machine; the same exchange on h11 directly about 70 µs, and
less again with the request written here and the answer parsed by llhttp.
:class:`PooledClient` does only what those callers need — ``POST`` a body, read the whole
answer — and keeps the guarantees that matter:

- at most ``max_connections`` requests in flight (more wait for a free slot);
- kept-alive connections reused most-recently-used first, per origin, dropped after
  :data:`KEEPALIVE_EXPIRY_S` idle or when the server has closed them (the socket is
  readable while idle), so a stale connection is never written to;
- a connection is reused only after a complete exchange; any failure closes it;
- TLS with the system's default verification (one context for all connections);
- answers larger than :data:`MAX_BODY_BYTES` are refused.

Failures are :class:`RequestFailed` (transient: refused, reset, timed out, broken answer)
or :class:`InvalidRequest` (a bad URL, a header that cannot be sent); callers translate
them at their boundary (providers into provider errors, federation into peer errors). No
proxy support: neither caller ever used the environment's proxies.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httptools
import trio

from orrad.errors import OrradError
from orrad.httpfields import InvalidField, LineCache, field_line
from orrad.sync import acquire

__all__ = ["KEEPALIVE_EXPIRY_S", "MAX_BODY_BYTES", "Answer", "InvalidRequest", "PooledClient",
           "RequestFailed"]

KEEPALIVE_EXPIRY_S = 30.0
MAX_BODY_BYTES = 64 * 1024 * 1024
READ_SIZE = 65536
MAX_KNOWN_URLS = 256
# Written by the client itself; the same names among a caller's headers are left out.
_OWN_HEADERS = frozenset({"host", "content-length", "user-agent", "transfer-encoding",
                          "connection"})

Origin = tuple[str, str, int]  # scheme, host, port


class RequestFailed(OrradError):
    """No complete answer: refused, reset, timed out (``timed_out``), or a broken answer."""

    def __init__(self, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out


class InvalidRequest(OrradError):
    """A request that cannot be sent as asked: a bad URL, a header value with a newline."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Connection:
    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    # The descriptor, for plain TCP only: a request is then written and its answer read
    # with os.write / os.read around trio.lowlevel.wait_readable, not through the
    # stream's send_all (which always yields once more) and receive_some (which first
    # tries a read that cannot succeed yet): 13% of a call's instructions. TLS goes
    # through the stream.
    fd: int | None = None
    idle_since: float = 0.0

    def is_stale(self, now: float) -> bool:
        # Readable while idle means the server closed it (or sent junk): never reuse.
        return now - self.idle_since > KEEPALIVE_EXPIRY_S or self.socket.is_readable()


def _origin(url: str) -> tuple[Origin, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"request failed: invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"request failed: unsupported URL {parts.scheme}://…")
    default = 443 if parts.scheme == "https" else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port or default), target


def _host_header(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


class _Reader:
    """llhttp's callbacks for one answer (1xx interim answers are skipped)."""

    __slots__ = ("chunks", "complete", "head_done", "headers", "keep_alive", "parser", "size",
                 "too_big", "until_close")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.head_done = self.complete = self.too_big = self.keep_alive = False
        self.until_close = False  # no length and not chunked: the body ends with the stream

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.head_done = True
            names = {name for name, _ in self.headers}
            self.until_close = not ({b"content-length", b"transfer-encoding"} & names)

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY_BYTES:
            self.too_big = True
        elif not self.too_big:
            self.chunks.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            # Asked now: once a message is complete, llhttp answers for the next one.
            self.keep_alive = bool(self.parser.should_keep_alive())
        else:  # an interim 1xx: the real answer follows
            self.headers = []


class PooledClient:
    """A shared HTTP client (see the module docstring).

    Use as ``async with PooledClient(n) as client:``; ``await client.post(...)``.

    Resources:
        Idle connections are closed by :meth:`aclose` (or leaving the ``async with``).
    """

    def __init__(self, max_connections: int, *, connect_timeout_s: float = 10.0,
                 user_agent: str = "orrad") -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = trio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._connect_timeout_s = connect_timeout_s
        self._user_agent = user_agent
        self._tls: ssl.SSLContext | None = None
        self._lines = LineCache(field_line, 256)  # a caller sends the same few headers
        # Callers post to the same few URLs; splitting one costs more than the request line.
        self._targets: dict[str, tuple[Origin, str]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await trio.aclose_forcefully(connection.stream)

    async def post(self, url: str, *, headers: dict[str, str], body: bytes,
                   timeout_s: float) -> Answer:
        """POST ``body`` to ``url``; the whole answer within ``timeout_s`` seconds.

        Raises:
            RequestFailed: timed out, refused, reset, or a broken response.
            InvalidRequest: an invalid or unsupported URL, a header that cannot be sent.
        """
        known = self._targets.get(url)
        if known is None:
            known = _origin(url)  # raises for a URL that cannot be used: never kept
            if len(self._targets) >= MAX_KNOWN_URLS:
                self._targets.clear()
            self._targets[url] = known
        origin, target = known
        # A bare cancel scope, not trio.fail_after: one call per message, and fail_after's
        # generator-based context manager is a good part of a call's bookkeeping.
        with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
            await acquire(self._slots)
            try:
                return await self._exchange(origin, target, headers, body)
            finally:
                self._slots.release()
        assert scope.cancelled_caught
        raise RequestFailed(f"request timed out after {timeout_s:g}s", timed_out=True)

    async def _exchange(self, origin: Origin, target: str, headers: dict[str, str],
                        body: bytes) -> Answer:
        request = self._request(origin, target, headers, body)
        connection = self._reuse(origin) or await self._connect(origin)
        reusable = False
        try:
            answer, reusable = await self._send_and_read(connection, request)
            return answer
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RequestFailed(f"request failed: {type(exc).__name__}: {exc}") from None
        except httptools.HttpParserError as exc:
            raise RequestFailed(f"request failed: broken response: {exc}") from None
        finally:
            if reusable:
                connection.idle_since = trio.current_time()
                self._idle.setdefault(origin, []).append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)

    def _reuse(self, origin: Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        now = trio.current_time()
        while pool:
            connection = pool.pop()
            if not connection.is_stale(now):
                return connection
            connection.socket.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        try:
            with trio.fail_after(self._connect_timeout_s):
                tcp = await trio.open_tcp_stream(host, port)
                stream: trio.abc.Stream = tcp
                if scheme == "https":
                    if self._tls is None:
                        self._tls = ssl.create_default_context()
                    tls = trio.SSLStream(tcp, self._tls, server_hostname=host,
                                         https_compatible=True)
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise RequestFailed(f"request failed: connecting to {host}:{port} timed out",
                                timed_out=True) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise RequestFailed(
                f"request failed: cannot connect to {host}:{port}: {exc}") from None
        return _Connection(stream, tcp.socket, None if scheme == "https" else tcp.socket.fileno())

    def _request(self, origin: Origin, target: str, headers: dict[str, str],
                 body: bytes) -> bytes:
        """The whole request: line, Host, User-Agent, Content-Length, ``headers``, body.

        Raises:
            InvalidRequest: a header name or value that cannot be sent as it is.
        """
        head = (f"POST {target} HTTP/1.1\r\nhost: {_host_header(origin)}\r\n"
                f"user-agent: {self._user_agent}\r\ncontent-length: {len(body)}\r\n"
                ).encode("ascii")
        line = self._lines.line
        for name, value in headers.items():
            if name.lower() in _OWN_HEADERS:
                continue
            try:
                head += line(name, value)
            except InvalidField:  # a key from configuration with a newline, say: never shown
                raise InvalidRequest(f"request failed: header {name!r} has a value that "
                                    "cannot be sent (control or non-ASCII characters)") from None
        return head + b"\r\n" + body

    async def _send_and_read(self, connection: _Connection,
                             request: bytes) -> tuple[Answer, bool]:
        """Send ``request``, read the answer: it, and whether the connection may be reused."""
        fd = connection.fd
        sent = _write_now(fd, request) if fd is not None else 0
        if sent < len(request):
            await connection.stream.send_all(request[sent:] if sent else request)
        reader = _Reader()
        parser = reader.parser
        while not reader.complete:
            if fd is None:
                received = await connection.stream.receive_some(READ_SIZE)
            else:
                received = await _read_when_readable(connection.socket, fd)
            if not received:
                if reader.head_done and reader.until_close:
                    break  # the stream's end is the body's
                raise RequestFailed("request failed: the server closed the connection")
            parser.feed_data(received)
            if reader.too_big:
                raise RequestFailed(
                    f"request failed: answer larger than {MAX_BODY_BYTES} bytes")
        answer_headers: dict[str, str] = {}
        for name, value in reader.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            answer_headers[key] = (f"{answer_headers[key]}, {text}"
                                   if key in answer_headers else text)
        reusable = reader.complete and not reader.until_close and reader.keep_alive
        return Answer(parser.get_status_code(), answer_headers, b"".join(reader.chunks)), \
            reusable


def _write_now(fd: int, data: bytes) -> int:
    """What the socket takes of ``data`` at once; 0 when it takes nothing or fails (the
    stream's ``send_all`` then waits for room, or raises the error in trio's terms). The
    read that follows is the call's checkpoint."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0


async def _read_when_readable(sock: trio.socket.SocketType, fd: int) -> bytes:
    """The next bytes of an answer (``b""`` at its end), once the socket has some.

    Raises:
        OSError: the connection failed (reset, say).
    """
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:  # woken without data after all: wait again
            continue
