"""orrad's own small HTTP/1.1 server over h11, shared by every listener and the test fakes.

``Router`` maps requests to async handlers; ``HTTPServer`` runs the connections with the
limits in ``ServerLimits``; handlers return ``Response`` (usually via ``json_response``) or
raise ``HTTPError``.
"""

from orrad.http.limits import ServerLimits, parse_listen
from orrad.http.messages import (
    Handler,
    HTTPError,
    Request,
    Response,
    error_response,
    json_response,
)
from orrad.http.routing import Router
from orrad.http.server import HTTPServer

__all__ = [
    "HTTPError",
    "HTTPServer",
    "Handler",
    "Request",
    "Response",
    "Router",
    "ServerLimits",
    "error_response",
    "json_response",
    "parse_listen",
]
