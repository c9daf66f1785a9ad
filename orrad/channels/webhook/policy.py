"""Where a webhook callback may go: the address rules of ``callback_url`` (CONTRACT §4).

A caller of a webhook is authenticated, and callbacks to loopback and private addresses
are normal for a self-hosted daemon, so those stay allowed. Refused always, in every
spelling of the address:

- link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata services live,
  and the two well-known metadata addresses outside it (fd00:ec2::254, 100.100.100.200);
- unspecified addresses (0.0.0.0/8, ``::``; 0.0.0.0 reaches this host on Linux);
- multicast (224.0.0.0/4, ff00::/8) and the broadcast address 255.255.255.255;
- any of these embedded in an IPv6 address: IPv4-mapped (``::ffff:a.b.c.d``),
  IPv4-compatible (``::a.b.c.d``), IPv4-translated (``::ffff:0:a.b.c.d``), 6to4
  (``2002::/16``), NAT64 (``64:ff9b::/96``, ``64:ff9b:1::/48``) and Teredo (``2001::/32``);
- a URL with userinfo (``user:pass@``, also an empty one).

An IPv4 host is read the way ``inet_aton`` (and so ``getaddrinfo``) reads it: one to four
parts in decimal, octal (``0177``) or hex (``0x7f``), so ``2130706433``, ``0x7f.1`` and
``127.1`` are all 127.0.0.1, and the rules above hold for every such spelling. At intake
such a spelling is refused even for an allowed address (write ``127.0.0.1``): nobody writes
one but to slip past a filter. A channel's ``callback_allow`` (CIDRs, addresses, host names,
``*.example.com``) narrows this further when set: only a listed name, or an address inside
a listed network, is allowed; it never re-allows a refused address.

:meth:`CallbackPolicy.url_problem` is the check at intake (no DNS: a host name passes when
it could be allowed); :meth:`CallbackPolicy.address_problem` is the check of every
address a name resolves to, made at send time on the address that is then connected to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CallbackPolicy", "IPAddress", "parse_ip", "parse_ipv4_loose", "refusal"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
_UNSPECIFIED_V4 = _V4("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_METADATA = frozenset({ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
                       ipaddress.ip_address("100.100.100.200")})  # Alibaba Cloud
_NAT64 = (_V6("64:ff9b::/96"), _V6("64:ff9b:1::/48"))
_TRANSLATED = _V6("::ffff:0:0:0/96")
_LOOSE_V4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as ``inet_aton`` reads it (``a``, ``a.b``, ``a.b.c``, ``a.b.c.d``;
    each part decimal, ``0``-octal or ``0x``-hex; the last part fills the remaining
    bytes), or ``None`` when it is not such a number."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_LOOSE_V4_PART.fullmatch(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:], 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    return ipaddress.IPv4Address(number << (8 * (4 - len(head))) | last)


def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells (an IPv6 literal without brackets, a zone allowed, or an
    IPv4 in any ``inet_aton`` form; one trailing dot ignored), or ``None`` for a name."""
    try:
        return ipaddress.IPv6Address(host)
    except ValueError:
        pass
    return parse_ipv4_loose(host.removesuffix("."))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may reach through a gateway)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    number = int(ip)
    if number >> 32 == 0 and number > 1:  # IPv4-compatible ::a.b.c.d (not :: or ::1)
        found.append(ipaddress.IPv4Address(number))
    if ip in _TRANSLATED or any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(number & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    return found


def _own_refusal(ip: IPAddress) -> str | None:
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _UNSPECIFIED_V4):
        return "an unspecified address"
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip == _BROADCAST:
        return "the broadcast address"
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why a callback may never go to ``ip`` (``"a link-local address"``, ...), or
    ``None``; an IPv4 address embedded in an IPv6 one is judged too."""
    reason = _own_refusal(ip)
    if reason is not None or not isinstance(ip, ipaddress.IPv6Address):
        return reason
    for inner in _embedded_ipv4(ip):
        reason = _own_refusal(inner)
        if reason is not None:
            return f"{reason} ({inner}) inside an IPv6 address"
    return None


def _host_name_problem(host: str) -> str | None:
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"callback_url host {host[:80]!r} is not a valid host name"
    return None


@dataclass(frozen=True)
class CallbackPolicy:
    """The address rules of one channel: the fixed refusals, narrowed by
    ``callback_allow`` when that is set (``networks`` and ``hosts`` from it)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()  # lower case; ".example.com" for *.example.com

    @classmethod
    def from_allow(cls, entries: Iterable[str]) -> CallbackPolicy:
        """The policy of a ``callback_allow`` list (entries checked by the config).

        Raises:
            ValueError: an entry is neither a network, an address nor a host name.
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            entry = entry.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().removesuffix(".")
            wildcard = name.startswith("*.")
            if _host_name_problem(name[2:] if wildcard else name) is not None:
                raise ValueError(f"{entry!r} is not a network, an address or a host name")
            hosts.add(name[1:] if wildcard else name)
        return cls(tuple(networks), frozenset(hosts))

    @property
    def restricted(self) -> bool:
        """Whether ``callback_allow`` is set (only what it lists is allowed)."""
        return bool(self.networks or self.hosts)

    def host_listed(self, host: str) -> bool:
        """Whether ``host`` (a name) is allowed by name in ``callback_allow``."""
        name = host.lower().removesuffix(".")
        return name in self.hosts or any(
            h.startswith(".") and name.endswith(h) for h in self.hosts)

    def _in_networks(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks
                   if c.version == net.version)

    def address_problem(self, host: str, ip: IPAddress) -> str | None:
        """Why a callback to ``host`` may never connect to ``ip`` (an address ``host``
        resolved to, or ``host`` itself), or ``None``. Only the fixed rules: see
        :meth:`allows` for ``callback_allow``."""
        reason = refusal(ip)
        if reason is None:
            return None
        if parse_ip(host) is None:
            return f"callback_url host {host!r} resolves to {reason} ({ip})"
        return f"callback_url points at {reason}" + (f" ({ip})" if str(ip) != host else "")

    def allows(self, host: str, ip: IPAddress) -> bool:
        """Whether ``callback_allow`` lets a callback to ``host`` use ``ip`` (always,
        when it is not set): ``host`` is a listed name, or ``ip`` is in a listed
        network."""
        return (not self.restricted or self._in_networks(ip)
                or (parse_ip(host) is None and self.host_listed(host)))

    def url_problem(self, raw: str) -> str | None:
        """Why ``raw`` cannot be a ``callback_url``, judged without DNS (a literal host in
        full, a name only by ``callback_allow``), or ``None``."""
        import httpx  # here, not at the top: most daemons never see a callback_url

        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL:
            return "callback_url is not a valid URL"
        if url.scheme not in ("http", "https") or not url.host or " " in raw:
            return "callback_url must be an http(s) URL"
        if url.userinfo or "@" in urlsplit(raw).netloc:
            return "callback_url must not carry a user name or password"
        if url.port is not None and not 0 < url.port < 65536:
            return "callback_url has an invalid port"
        host = url.raw_host.decode("ascii")
        ip = parse_ip(host)
        if ip is not None:
            problem = self.address_problem(host, ip)
            if problem is None and isinstance(ip, ipaddress.IPv4Address) and str(ip) != host:
                # 2130706433, 0x7f.1, 127.1: only ever written to slip past a filter
                problem = (f"callback_url host {host!r} is an unusual spelling of {ip}; "
                           f"write {ip}")
            if problem is None and not self.allows(host, ip):
                problem = f"callback_url address {ip} is not in callback_allow"
            return problem
        problem = _host_name_problem(host.removesuffix("."))
        if problem is not None:
            return problem
        if self.restricted and not self.networks and not self.host_listed(host):
            return f"callback_url host {host!r} is not in callback_allow"
        return None
