"""The outbound guard: which URLs and addresses taskwire may connect to on a user's behalf.

Every URL a user gives us (webhooks, image URLs) is hostile until checked: only http and
https; the host resolved once; every resolved address checked after unwrapping IPv4 carried
inside IPv6 (mapped, compatible, NAT64, 6to4, Teredo); only globally routable unicast
addresses pass, unless an operator allow-lists a range. A URL is parsed once, by httpx's
own parser (`httpx.URL`), the one the HTTP client uses: what it cannot represent is refused,
and the host checked is the host httpx will dial (IDNA-encoded, or a bare IP literal). Odd
spellings of IPv4 literals that it lets through as names (`2130706433`, `0x7f000001`,
`127.1`) are read the way `inet_aton` would, so what is checked is what a connection would
reach. The caller connects to an address this module returned (core/http_guard.py does),
never to a second lookup of the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_6TO4 = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


class OutboundRefused(Exception):
    """A URL or address taskwire will not connect to; the message says why."""


class OutboundUnresolvable(OutboundRefused):
    """The host name does not resolve (now): not known to be forbidden."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect, and what to call the host (Host header, TLS name)."""

    url: str
    scheme: str
    host: str  # as httpx dials it (see ParsedURL), the name TLS verifies
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A URL as httpx parsed it, once: give `url` to the client, check `host`."""

    url: httpx.URL
    scheme: str
    host: str  # what httpcore passes to connect_tcp: an IDNA (ASCII) name or a bare IP
    port: int


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, in any spelling a resolver accepts."""
    candidate = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    return _inet_aton(candidate)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the classic BSD forms: a, a.b, a.b.c, a.b.c.d; each part decimal, 0-octal or
    0x-hex (what getaddrinfo and browsers accept)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    values = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                values.append(int(part[2:], 16) if part[2:] else 0)
            elif part.startswith("0") and len(part) > 1:
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, for the forms that route to it."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _6TO4:
        return address.sixtofour
    if address in _TEREDO and address.teredo is not None:
        return address.teredo[1]  # the client's (obfuscated) address, unmasked
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


class OutboundPolicy:
    """Decides whether an address may be connected to; `allow` lists operator exceptions."""

    def __init__(self, allow: Sequence[str] = ()):
        self.allow = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow)

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` is refused, or None when it may be used."""
        if any(address.version == net.version and address in net for net in self.allow):
            return None
        inner = embedded_ipv4(address)
        if inner is not None:
            if any(inner in net for net in self.allow if net.version == 4):
                return None
            reason = self._classify(inner)
            return f"{address} carries {inner}, {reason}" if reason else None
        return self._classify(address)

    @staticmethod
    def _classify(address: IPAddress) -> str | None:
        if address.is_unspecified:
            return f"{address} is unspecified"
        if address.is_loopback:
            return f"{address} is loopback"
        if address.is_link_local:
            return f"{address} is link-local (cloud metadata lives there)"
        if address.is_multicast:
            return f"{address} is multicast"
        if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
            return f"{address} is carrier-grade NAT space"
        if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
            return f"{address} is IPv6 unique-local"
        if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
            return f"{address} is IPv6 site-local (fec0::/10, deprecated but still routed)"
        if address.is_reserved:
            return f"{address} is reserved"
        if address.is_private:
            return f"{address} is private"
        if not address.is_global:
            return f"{address} is not publicly routable"
        return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


async def system_resolver(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# A host name httpx lets through that a resolver could look up: ASCII labels (after IDNA),
# no percent-escapes, spaces or empty labels.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def split_url(url: str | httpx.URL) -> ParsedURL:
    """The URL as httpx parses it, if it is an absolute http(s) URL with a host and port it
    can dial; OutboundRefused if not."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
        parsed.host  # noqa: B018 (decodes IDNA labels, as the client does: bad A-labels raise)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        # ValueError covers idna's IDNAError and other UnicodeErrors
        raise OutboundRefused(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise OutboundRefused("only http and https URLs are allowed")
    if not host:
        raise OutboundRefused("the URL has no host")
    if ":" in host:  # an IPv6 literal (httpx checked it, bar a zone)
        if "%" in host:
            raise OutboundRefused("IPv6 zone identifiers are not allowed")
    elif not _HOST_NAME.fullmatch(host):
        raise OutboundRefused(f"{host!r} is not a valid host name")
    port = (443 if parsed.scheme == "https" else 80) if parsed.port is None else parsed.port
    if not 1 <= port <= 65535:
        raise OutboundRefused(f"port {port} is not allowed")
    return ParsedURL(parsed, parsed.scheme, host, port)


async def resolve_checked(
    host: str, policy: OutboundPolicy, resolver: Resolver = system_resolver
) -> tuple[IPAddress, ...]:
    """The addresses of `host` (resolved once), if every one of them is allowed."""
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            answers = await resolver(host)
        except (OSError, UnicodeError) as exc:
            raise OutboundUnresolvable(f"{host} does not resolve ({exc})") from None
        addresses = []
        for answer in answers:
            parsed = parse_ip_literal(answer)
            if parsed is None:
                raise OutboundRefused(f"{host} resolved to something not an address")
            addresses.append(parsed)
        if not addresses:
            raise OutboundRefused(f"{host} has no addresses")
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            raise OutboundRefused(f"{host} resolves to a forbidden address: {reason}")
    return tuple(dict.fromkeys(addresses))


async def check_url(
    url: str, policy: OutboundPolicy, resolver: Resolver = system_resolver
) -> Target:
    """Resolve a URL's host once and check every address; OutboundRefused says why not."""
    parsed = split_url(url)
    addresses = await resolve_checked(parsed.host, policy, resolver)
    return Target(url, parsed.scheme, parsed.host, parsed.port, addresses)
