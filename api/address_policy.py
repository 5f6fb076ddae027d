"""Which IP addresses an audit may connect to: the service's own table, not `ipaddress.is_private`.

The rows are the IANA IPv4 and IPv6 Special-Purpose Address Registries' entries that are not
globally reachable (plus multicast, limited broadcast and the deprecated ranges), as of 2025.  The
service owns the table so that a Python upgrade cannot move an address across the line unseen, and
so that its tests can name every row.

An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-translated, NAT64, 6to4, Teredo,
the deprecated IPv4-compatible form) is judged by the IPv4 address it reaches as well: a tunnel or
translator would deliver the connection there.  Outside 2000::/3 (global unicast) nothing IPv6 is
public, so a range IANA adds later is refused until the table names it.

Host spellings that `inet_aton` reads as IPv4 (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) are
parsed here, never handed to a DNS resolver that would read them the same way after the check.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Row:
    network: IPNetwork
    kind: str  # what a person calls it, used in the refusal message
    source: str  # where the range is defined


def _rows(*rows: tuple[str, str, str]) -> tuple[Row, ...]:
    return tuple(Row(ipaddress.ip_network(n), kind, source) for n, kind, source in rows)


NON_PUBLIC_IPV4 = _rows(
    ("0.0.0.0/32", "unspecified", "RFC 1122"),
    ("0.0.0.0/8", "this-network", "RFC 791"),
    ("10.0.0.0/8", "private", "RFC 1918"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "RFC 1122"),
    ("169.254.0.0/16", "link-local", "RFC 3927"),
    ("172.16.0.0/12", "private", "RFC 1918"),
    # the registry marks 192.0.0.9 and .10 (PCP and TURN anycast) global; no audit target lives there
    ("192.0.0.0/24", "IETF protocol assignment", "RFC 6890"),
    ("192.0.2.0/24", "documentation", "RFC 5737"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    ("192.168.0.0/16", "private", "RFC 1918"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation", "RFC 5737"),
    ("203.0.113.0/24", "documentation", "RFC 5737"),
    ("224.0.0.0/4", "multicast", "RFC 5771"),
    ("255.255.255.255/32", "limited broadcast", "RFC 919"),
    ("240.0.0.0/4", "reserved", "RFC 1112"),
)

NON_PUBLIC_IPV6 = _rows(
    ("::/128", "unspecified", "RFC 4291"),
    ("::1/128", "loopback", "RFC 4291"),
    ("100::/64", "discard-only", "RFC 6666"),
    ("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation", "RFC 8215"),
    ("2001:2::/48", "benchmarking", "RFC 5180"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2001::/23", "IETF protocol assignment", "RFC 2928"),
    # Teredo (N/A in the registry): a tunnel to whatever its server and client addresses are
    ("2001::/32", "Teredo tunnel", "RFC 4380"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "segment routing (SRv6) SID", "RFC 9602"),
    ("fc00::/7", "unique-local (private)", "RFC 4193"),
    ("fe80::/10", "link-local", "RFC 4291"),
    ("fec0::/10", "deprecated site-local", "RFC 3879"),
    ("ff00::/8", "multicast", "RFC 4291"),
)
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

# IPv6 prefixes that carry an IPv4 address in their last 32 bits, and what they are called
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated by RFC 4291
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
TEREDO = ipaddress.ip_network("2001::/32")


def _most_specific(address: IPAddress) -> Row | None:
    table = NON_PUBLIC_IPV4 if address.version == 4 else NON_PUBLIC_IPV6
    rows = [row for row in table if address in row.network]
    return max(rows, key=lambda row: row.network.prefixlen) if rows else None


def embedded_ipv4(address: IPAddress) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of the embedding."""
    if address.version == 4:
        return []
    assert isinstance(address, ipaddress.IPv6Address)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_MAPPED:
        return [(low32, "IPv4-mapped")]
    if address in IPV4_TRANSLATED:
        return [(low32, "IPv4-translated")]
    if address in NAT64_WELL_KNOWN:
        return [(low32, "NAT64")]
    if address in NAT64_LOCAL_USE:
        # RFC 6052's /96 layout is the one used within the local-use /48; judged on the range anyway
        return [(low32, "local-use NAT64")]
    if address in SIX_TO_FOUR:
        return [(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "6to4")]
    if address in TEREDO:
        server = ipaddress.IPv4Address((int(address) >> 64) & 0xFFFFFFFF)
        client = ipaddress.IPv4Address(~int(address) & 0xFFFFFFFF)  # stored inverted (RFC 4380)
        return [(server, "Teredo server"), (client, "Teredo client")]
    if address in IPV4_COMPATIBLE and int(address) > 1:
        return [(low32, "IPv4-compatible")]
    return []


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, for a person; None for a public one."""
    for inner, embedding in embedded_ipv4(address):
        row = _most_specific(inner)
        if row is not None:
            return f"{row.kind} ({embedding} {inner})"
    row = _most_specific(address)
    if row is not None:
        return row.kind
    if address.version == 6:
        if address in IPV4_MAPPED or address in IPV4_TRANSLATED or address in NAT64_WELL_KNOWN:
            return None  # judged by the public IPv4 address it reaches, above
        if address in IPV4_COMPATIBLE:
            return "deprecated IPv4-compatible"
        if address not in GLOBAL_UNICAST:
            return "reserved (outside global unicast 2000::/3)"
    return None


def normalised(address: IPAddress) -> IPAddress:
    """The address a connection reaches: the IPv4 one for mapped, translated and NAT64 forms."""
    for inner, embedding in embedded_ipv4(address):
        if embedding in ("IPv4-mapped", "IPv4-translated", "NAT64"):
            return inner
    return address


_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def parse_literal(host: str) -> IPAddress | None:
    """The address a host literal spells (IPv6 in brackets or not, zone id dropped; inet_aton IPv4)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # a zone id names an interface, not another address
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    return _inet_aton(text.rstrip("."))


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """glibc's inet_aton: 1 to 4 parts, each decimal, 0x-hex or 0-octal, the last filling the rest."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(p) for p in parts):
        return None
    values = [_inet_aton_number(p) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    return ipaddress.IPv4Address(number << (8 * (4 - len(head))) | last)


def _inet_aton_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    return int(part, 8) if part.startswith("0") else int(part)
