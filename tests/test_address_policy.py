"""The SSRF guard's address decision, table-driven over IP literals: nothing here resolves or connects.

Each row is a host as it could appear in an endpoint URL and what the guard must decide: the kind of
non-public address it names (a word the refusal must contain), or None for a public one.  The
forms cover IANA's IPv4 and IPv6 special-purpose registries (first, last and inner addresses), every
IPv6 embedding of IPv4 (mapped, compatible, translated, NAT64 well-known and local-use, 6to4,
Teredo) and inet_aton spellings (decimal, hex, octal, short forms).
"""

from __future__ import annotations

import ipaddress

import pytest

from hspi.api.address_policy import (
    NON_PUBLIC_IPV4,
    NON_PUBLIC_IPV6,
    embedded_ipv4,
    non_public_kind,
    normalised,
    parse_literal,
)
from hspi.api.security import EndpointGuard, EndpointRefused


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"the guard tried to resolve {host!r}: IP literals must be decided without DNS")


def mapped(v4: str) -> str:
    return f"::ffff:{v4}"


def translated(v4: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("::ffff:0:0:0")) | int(ipaddress.IPv4Address(v4))))


def nat64(v4: str, prefix: str = "64:ff9b::") -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | int(ipaddress.IPv4Address(v4))))


def six_to_four(v4: str) -> str:
    return str(ipaddress.IPv6Address(0x2002 << 112 | int(ipaddress.IPv4Address(v4)) << 80 | 1))


def teredo(server: str, client: str) -> str:
    value = (
        0x20010000 << 96 | int(ipaddress.IPv4Address(server)) << 64 | (~int(ipaddress.IPv4Address(client)) & 0xFFFFFFFF)
    )
    return str(ipaddress.IPv6Address(value))


def compatible(v4: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv4Address(v4))))


NON_PUBLIC_V4 = [  # (address, the word its refusal names)
    ("127.0.0.1", "loopback"),
    ("10.20.30.40", "private"),
    ("192.168.1.1", "private"),
    ("172.31.255.255", "private"),
    ("169.254.169.253", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.2.7", "documentation"),
    ("240.0.0.1", "reserved"),
]
PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "151.101.1.69"]

FORMS: list[tuple[str, str | None]] = [
    # IPv4 special-purpose registry: first, last, and a middle address of each row
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this-network"),
    ("0.255.255.255", "this-network"),
    ("10.0.0.0", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.0", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.255.255", "link-local"),
    ("172.16.0.0", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.0", "IETF protocol assignment"),
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.0.170", "IETF protocol assignment"),
    ("192.0.0.255", "IETF protocol assignment"),
    ("192.0.2.0", "documentation"),
    ("192.0.2.255", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.0.0", "private"),
    ("192.168.255.255", "private"),
    ("198.18.0.0", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.200", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.255", "multicast"),
    ("240.0.0.0", "reserved"),
    ("254.255.255.255", "reserved"),
    ("255.255.255.255", "limited broadcast"),
    # around the edges: public neighbours of non-public rows
    ("9.255.255.255", None),
    ("11.0.0.0", None),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    ("172.15.255.255", None),
    ("172.32.0.0", None),
    ("192.0.1.0", None),
    ("192.167.255.255", None),
    ("192.169.0.0", None),
    ("198.17.255.255", None),
    ("198.20.0.0", None),
    ("223.255.255.255", None),
    *[(a, None) for a in PUBLIC_V4],
    # IPv6 special-purpose registry
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("[::1]", "loopback"),
    ("0:0:0:0:0:0:0:1", "loopback"),
    ("100::", "discard-only"),
    ("100::ffff:ffff:ffff:ffff", "discard-only"),
    ("100:0:0:1::1", "dummy"),
    ("2001:2::1", "benchmarking"),
    ("2001:db8::", "documentation"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("2001:10::1", "IETF protocol assignment"),
    ("2001:1ff:ffff::1", "IETF protocol assignment"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("5f00::1", "segment routing"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("[fe80::1%25eth0]", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    ("feff:ffff::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::101", "multicast"),
    ("4000::1", "outside global unicast"),
    ("1::1", "outside global unicast"),
    ("e000::1", "outside global unicast"),
    ("64:ff9b:0:1::1", "outside global unicast"),
    ("2001:4860:4860::8888", None),
    ("2606:4700:4700::1111", None),
    ("2a00:1450:4001:80b::200e", None),
    ("2400:cb00::1", None),
    ("3ffe:ffff::1", None),  # 3ffe::/16 (the old 6bone) is global unicast again
    # IPv6 embeddings of IPv4
    *[(mapped(a), word) for a, word in NON_PUBLIC_V4],
    *[(translated(a), word) for a, word in NON_PUBLIC_V4],
    *[(nat64(a), word) for a, word in NON_PUBLIC_V4],
    *[(six_to_four(a), word) for a, word in NON_PUBLIC_V4],
    *[(teredo(a, "8.8.8.8"), word) for a, word in NON_PUBLIC_V4[:5]],
    *[(teredo("8.8.8.8", a), word) for a, word in NON_PUBLIC_V4[:5]],
    *[(compatible(a), word) for a, word in NON_PUBLIC_V4 if a != "0.0.0.0"],
    ("::ffff:7f00:1", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("::ffff:a9fe:a9fd", "link-local"),
    ("0:0:0:0:0:ffff:7f00:0001", "loopback"),
    ("64:ff9b::127.0.0.1", "loopback"),
    ("64:ff9b:1:0:1::808:808", "local-use"),
    ("64:ff9b:1:ffff::a00:1", "private"),  # local-use NAT64 judged by the IPv4 it carries first
    (nat64("8.8.8.8", "64:ff9b:1::"), "local-use"),
    (teredo("8.8.8.8", "1.1.1.1"), "Teredo"),
    (compatible("8.8.8.8"), "IPv4-compatible"),
    *[(mapped(a), None) for a in PUBLIC_V4],
    *[(translated(a), None) for a in PUBLIC_V4],
    *[(nat64(a), None) for a in PUBLIC_V4],
    *[(six_to_four(a), None) for a in PUBLIC_V4],
    # inet_aton spellings of IPv4, which a resolver would read the same way
    ("2130706433", "loopback"),
    ("0x7f000001", "loopback"),
    ("0x7F.0.0.1", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("017700000001", "loopback"),
    ("127.1", "loopback"),
    ("127.0.1", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("0", "unspecified"),
    ("0x0", "unspecified"),
    ("10.1", "private"),
    ("0xa.0x1.0x2.0x3", "private"),
    ("012.0.0.1", "private"),
    ("3232235777", "private"),
    ("0xc0a80101", "private"),
    ("2852039166", "link-local"),  # 169.254.169.254, the metadata service: refused by name below
    ("134744072", None),  # 8.8.8.8
    ("0x8080808", None),
]


def test_the_table_has_enough_forms() -> None:
    assert len(FORMS) >= 100 and len({host for host, _ in FORMS}) == len(FORMS)


@pytest.mark.parametrize("host, word", FORMS, ids=[h for h, _ in FORMS])
def test_address_decision(host: str, word: str | None) -> None:
    address = parse_literal(host)
    assert address is not None, f"{host!r} is an IP literal"
    kind = non_public_kind(normalised(address)) or non_public_kind(address)
    guard = EndpointGuard(resolver=_no_dns)
    if word is None:
        assert kind is None, (host, kind)
        assert guard.check_host(host, 80)
        return
    assert kind is not None and word.lower() in kind.lower(), (host, kind)
    with pytest.raises(EndpointRefused) as info:
        guard.check_host(host, 80)
    message = str(info.value)
    assert word.lower() in message.lower() or "metadata" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://2852039166/",
        "http://[2002:a9fe:a9fe::1]/",
    ],
)
def test_metadata_is_refused_in_every_spelling(url: str) -> None:
    with pytest.raises(EndpointRefused, match="metadata"):
        EndpointGuard(["0.0.0.0/0", "::/0"], resolver=_no_dns).check(url)


def test_an_allowlist_admits_the_ipv4_an_ipv6_form_reaches() -> None:
    guard = EndpointGuard(["127.0.0.0/8"], resolver=_no_dns)
    assert guard.check("http://[::ffff:127.0.0.1]:8000/v1")
    assert guard.check("http://2130706433:8000/v1")
    with pytest.raises(EndpointRefused, match="loopback"):
        guard.check("http://[::1]/v1")


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.0.0.1", "0x1.0x2.0x3.0x100", "08.0.0.1", "1..2", ""])
def test_names_that_are_not_literals_are_left_to_the_resolver(host: str) -> None:
    assert parse_literal(host) is None


def test_every_row_of_the_table_is_refused_at_both_ends() -> None:
    for row in (*NON_PUBLIC_IPV4, *NON_PUBLIC_IPV6):
        for address in (row.network.network_address, row.network.broadcast_address):
            assert non_public_kind(normalised(address)) or non_public_kind(address), (row, address)


def test_embeddings_are_read_back() -> None:
    assert embedded_ipv4(ipaddress.ip_address(teredo("1.2.3.4", "5.6.7.8"))) == [
        (ipaddress.IPv4Address("1.2.3.4"), "Teredo server"),
        (ipaddress.IPv4Address("5.6.7.8"), "Teredo client"),
    ]
    assert embedded_ipv4(ipaddress.ip_address(six_to_four("9.9.9.9"))) == [(ipaddress.IPv4Address("9.9.9.9"), "6to4")]
    assert normalised(ipaddress.ip_address(nat64("9.9.9.9"))) == ipaddress.IPv4Address("9.9.9.9")
