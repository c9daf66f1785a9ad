"""Server limits (no I/O); listen addresses are parsed by :mod:`orrad.listen`."""

from __future__ import annotations

from dataclasses import dataclass

from orrad.listen import parse_listen

__all__ = ["ServerLimits", "parse_listen"]


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
    """Idle time allowed between requests on a kept-alive connection (counted from when the
    previous response began to be sent)."""
    max_connections: int = 1024
    """Open connections. A newcomer beyond it takes the place of the connection that has
    waited longest without a request in progress (an idle keep-alive, or a request head
    still arriving); only when every connection is busy with a request does it get 503
    ``unavailable``."""
    max_connections_per_client: int = 512
    """Open connections from one client address; beyond it, the newcomer takes the place
    of that address's longest-waiting connection the same way (or gets 503), so one
    address cannot hold every slot (slowloris, hoarded keep-alives)."""
    evict_after_s: float = 1.0
    """Only a connection that has waited at least this long may be closed to make room: a
    client's keep-alive between two requests in quick succession is not taken from it
    (its next request could be on the wire), while a hoard or a slowloris is older."""
    max_requests_per_connection: int = 1000
    """The response to the last allowed request carries ``Connection: close``."""
    discard_timeout_s: float = 2.0
    """After an early error (e.g. 413), unread body is discarded for at most this long..."""
    discard_max_bytes: int = 16 * 1024 * 1024
    """...or at most this many bytes; then the connection closes."""
    drain_timeout_s: float = 10.0
    """On :meth:`HTTPServer.stop`, in-flight requests get this long before being cancelled."""
    send_timeout_s: float = 10.0
    """Writing one response must finish within this, else the connection is dropped (a
    client that does not read its answers must not hold a task forever)."""
