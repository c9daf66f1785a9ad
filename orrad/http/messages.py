"""Request and response values, JSON helpers and the error handlers raise.

Everything here is plain data: no I/O, no trio. The server builds a :class:`Request` once the
whole body has arrived and turns whatever the handler returns (or raises) into bytes on the
wire through h11.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from orrad import safejson
from orrad.errors import OrradError

__all__ = [
    "HTTPError",
    "Handler",
    "Request",
    "Response",
    "error_response",
    "json_response",
]

# One reusable encoder: msgspec encoders keep their internal buffers between calls.
_ENCODER = msgspec.json.Encoder()
_JSON_CT = ("content-type", "application/json")


class Request:
    """One complete HTTP request, body included.

    Treat it as immutable: the server builds it after the body limit and read deadline were
    enforced, and the :class:`~orrad.http.Router` has already filled :attr:`path_params`.

    Attributes:
        method: the request method, e.g. ``"GET"``.
        target: the raw request target, e.g. ``"/v1/sessions?prefix=a"``.
        path: the percent-decoded path without the query, e.g. ``"/v1/sessions"``.
        query: the query string parsed with ``parse_qs(keep_blank_values=True)``.
        body: the raw body (``b""`` when there was none).
        client: the peer address as ``"host:port"``.
        path_params: values of the route pattern's ``{name}`` placeholders.
    """

    __slots__ = (
        "_headers",
        "_raw_headers",
        "body",
        "client",
        "method",
        "path",
        "path_params",
        "query",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        client: str = "",
        path_params: dict[str, str] | None = None,
        *,
        path: str | None = None,
        query: dict[str, list[str]] | None = None,
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Build a request; ``path`` and ``query`` are derived from ``target`` when omitted.

        The server passes them in (it has already split the target for routing) and gives
        the headers as h11 parsed them in ``raw_headers`` (lower-cased bytes names), which
        are decoded only if :attr:`headers` is read; tests and fakes usually pass only
        ``method``, ``target`` and perhaps ``headers`` and ``body``.
        """
        self.method = method
        self.target = target
        if path is None or query is None:
            raw_path, _, qs = target.partition("?")
            if path is None:
                path = unquote(raw_path) if "%" in raw_path else raw_path
            if query is None:
                query = parse_qs(qs, keep_blank_values=True) if qs else {}
        self.path = path
        self.query = query
        # None until first read when only raw headers were given (see the headers property).
        self._headers: list[tuple[str, str]] | None = headers
        if headers is None and raw_headers is None:
            self._headers = []
        self._raw_headers = raw_headers
        self.body = body
        self.client = client
        self.path_params = path_params if path_params is not None else {}

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs in arrival order; names lower-cased, latin-1 decoded."""
        headers = self._headers
        if headers is None:
            # Decoded on first use only: many handlers never look at most headers.
            raw = self._raw_headers or ()
            headers = self._headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        return headers

    def header(self, name: str) -> str | None:
        """Return the value of the first header called ``name`` (any case), else ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """Decode the body as JSON.

        Raises:
            HTTPError: 400 ``bad_request`` ("invalid JSON: ...") when the body is not valid
                JSON (an empty body is not valid JSON either) or is nested more than
                :data:`~orrad.safejson.MAX_JSON_DEPTH` deep.
        """
        try:
            return safejson.decode(self.body)
        except msgspec.DecodeError as exc:
            raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} from {self.client}>"


class Response:
    """A complete response: status, extra headers and the whole body.

    The server adds ``Content-Length``, ``Server`` and ``Date`` (and ``Connection: close``
    when it is going to close), so handlers must not set those themselves.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body

    def header(self, name: str) -> str | None:
        """Return the value of the first header called ``name`` (any case), else ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} ({len(self.body)} bytes)>"


Handler = Callable[[Request], Awaitable[Response]]
"""An async function answering one request; it may raise :class:`HTTPError`."""


def json_response(
    status: int, obj: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """Encode ``obj`` with msgspec and answer it as ``application/json``.

    ``headers`` are added after the ``content-type`` header.
    """
    hdrs = [_JSON_CT]
    if headers:
        hdrs.extend(headers)
    return Response(status, hdrs, _ENCODER.encode(obj))


def error_response(
    status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    """The contract's error shape: ``{"error": {"code": code, "message": message}}``."""
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


class HTTPError(OrradError):
    """Raised by handlers (and the router) to answer with an error response.

    The server turns it into ``error_response(status, code, message, headers)``; it is never
    logged as a failure.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def to_response(self) -> Response:
        """The error response this exception stands for."""
        return error_response(self.status, self.code, self.message, self.headers)
