"""``HOST:PORT`` listen addresses: the one parser for ``orrad check``, ``orrad run`` and
every listener (no I/O).

``check`` and ``run`` must judge an address alike: when the configuration accepted
``:18470`` but the server refused it, ``orrad check`` passed and ``orrad run`` died at
start. Rules: an empty host (``:8470``) means every interface, IPv4 and IPv6; IPv6 hosts go
in brackets (``[::1]:8470``, returned as ``("::1", 8470)``); the port is 1 to 5 ASCII
digits from 0 to 65535 (0 asks the system for a free port).
"""

from __future__ import annotations

__all__ = ["parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``value`` into ``(host, port)``; ``host`` is ``""`` for every interface.

    Raises:
        ValueError: not ``HOST:PORT`` (the message says what is wrong, not the value).
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError("bad [IPv6] host; write e.g. [::1]:8080")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:8080")
    if any(c.isspace() for c in host):
        raise ValueError("the host contains white space")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) \
            or int(port_text) > 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return host, int(port_text)
