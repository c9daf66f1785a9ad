"""Server limits and listen-address parsing (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

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
    """Writing one response must finish within this, else the connection is dropped (a
    client that does not read its answers must not hold a task forever)."""


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
