"""The audit service's security checks as data: the SSRF guard's decisions and hostile requests on every route.

    python benchmarks/security_probe.py [--out benchmarks/results/] [--fuzz 2000]

SSRF: host forms built from the special-purpose address table (first, last and an inner address
of every row), every IPv6 embedding of non-public IPv4 addresses, inet_aton spellings and public
controls, each decided by `EndpointGuard.check` on an `http://<form>/v1` URL.  A form is non-public
by construction, and also where Python's `ipaddress` says an address it reaches is not global (an
oracle the service does not use): admitted non-public forms must be 0.  Nothing is resolved: the
guard's resolver raises.

Fuzz: in process (FastAPI's TestClient, no sockets), a service without workers whose guard
resolves names to one public address; the deterministic sweep of tests/hostile_requests.py, then
hypothesis-generated hostile requests, until at least --fuzz requests ran, on SQLite and, when
HSPI_TEST_POSTGRES_URL is set, on PostgreSQL.  Server errors must be 0, every 4xx one sentence,
and every audit stored must read back.

Writes security.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform as host_platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the hostile-request generator and test databases

from hostile_requests import HostileRequest, hostile_request, sweep, well_formed_error  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from service_support import POSTGRES_URL, database_url, service_settings  # noqa: E402

from hspi.api.address_policy import NON_PUBLIC_IPV4, NON_PUBLIC_IPV6, parse_literal  # noqa: E402
from hspi.api.security import EndpointGuard, EndpointRefused  # noqa: E402

# -- SSRF ---------------------------------------------------------------------------------------------

NON_PUBLIC_V4 = ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1",
                 "100.64.0.1", "0.0.0.0", "198.18.0.1", "192.0.2.1", "192.0.0.8", "240.0.0.1",
                 "255.255.255.255", "224.0.0.1"]  # fmt: skip
PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "151.101.1.69"]
PUBLIC_V6 = ["2001:4860:4860::8888", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def embeddings(v4: str) -> dict[str, str]:
    n = int(ipaddress.IPv4Address(v4))
    return {
        "IPv4-mapped": f"::ffff:{v4}",
        "IPv4-mapped hex": _v6(0xFFFF << 32 | n),
        "IPv4-translated": _v6(0xFFFF << 48 | n),
        "IPv4-compatible": _v6(n),
        "NAT64": _v6(0x64FF9B << 96 | n),
        "NAT64 local-use": _v6(0x64FF9B0001 << 80 | n),
        "6to4": _v6(0x2002 << 112 | n << 80 | 1),
        "Teredo server": _v6(0x20010000 << 96 | n << 64 | (~int(ipaddress.IPv4Address("8.8.8.8")) & 0xFFFFFFFF)),
        "Teredo client": _v6(0x20010000 << 96 | int(ipaddress.IPv4Address("8.8.8.8")) << 64 | (~n & 0xFFFFFFFF)),
    }


def spellings(v4: str) -> dict[str, str]:
    n = int(ipaddress.IPv4Address(v4))
    octets = v4.split(".")
    return {
        "decimal": str(n),
        "hex": hex(n),
        "octal octets": ".".join(f"0{int(o):o}" for o in octets),
        "hex octets": ".".join(hex(int(o)) for o in octets),
        "short a.b": f"{octets[0]}.{n & 0xFFFFFF}",
        "trailing dot": v4 + ".",
    }


def reached(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    """What the address can deliver to, as the oracle sees it: itself and any IPv4 it embeds."""
    out = [address]
    if isinstance(address, ipaddress.IPv6Address):
        n = int(address)
        out += [a for a in (address.ipv4_mapped, address.sixtofour, *(address.teredo or ())) if a is not None]
        if address in ipaddress.ip_network("::ffff:0:0:0/96") or address in ipaddress.ip_network("64:ff9b::/96"):
            out.append(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return out


def ssrf_forms() -> list[tuple[str, str, bool]]:
    """(host as in a URL, how it was built, whether it is non-public by construction)."""
    forms: list[tuple[str, str, bool]] = []
    for row in (*NON_PUBLIC_IPV4, *NON_PUBLIC_IPV6):
        net = row.network
        for address in {net.network_address, net.broadcast_address, net.network_address + net.num_addresses // 3}:
            forms.append((str(address), f"{row.kind} {net}", True))
    for v4 in NON_PUBLIC_V4:
        forms += [(host, f"{how} of {v4}", True) for how, host in embeddings(v4).items()]
        forms += [(host, f"{how} spelling of {v4}", True) for how, host in spellings(v4).items()]
    for v4 in PUBLIC_V4:
        forms.append((v4, "public", False))
        forms += [(host, f"{how} of public {v4}", how.startswith(("IPv4-compatible", "NAT64 local-use", "Teredo")))
                  for how, host in embeddings(v4).items()]  # fmt: skip
        forms += [(host, f"{how} spelling of public {v4}", False) for how, host in spellings(v4).items()]
    forms += [(v6, "public", False) for v6 in PUBLIC_V6]
    forms += [("fe80::1%eth0", "link-local with a zone", True), ("[::1]", "bracketed loopback", True)]
    return list({host: (host, how, np) for host, how, np in forms}.values())


def probe_ssrf() -> dict:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"the guard resolved {host!r}")

    guard = EndpointGuard(resolver=no_dns)
    tried, admitted_non_public, admitted_public, refused_public = 0, [], 0, []
    for host, how, non_public in ssrf_forms():
        url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        tried += 1
        try:
            guard.check(f"http://{url_host}/v1")
            admitted = True
        except EndpointRefused:
            admitted = False
        literal = parse_literal(host)
        python_non_public = literal is not None and any(not a.is_global for a in reached(literal))
        if admitted and (non_public or python_non_public):
            admitted_non_public.append({"host": host, "built_as": how})
        elif admitted:
            admitted_public += 1
        elif not non_public and not python_non_public:
            refused_public.append({"host": host, "built_as": how})
    return {
        "forms_tried": tried,
        "admitted_non_public": len(admitted_non_public),
        "admitted_non_public_forms": admitted_non_public,
        "public_forms_admitted": admitted_public,
        "public_forms_refused": refused_public,  # public to both oracles, refused anyway (e.g. 192.0.0.9)
        "resolver_calls": 0,  # the resolver raises: any call would have failed the probe
    }


# -- fuzz ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def service(backend: str, tmp: Path) -> Iterator:
    from fastapi.testclient import TestClient

    from hspi.api.app import create_app

    url = database_url(backend, tmp)
    limits = {"rate_per_minute": 1e9, "rate_burst": 10**9, "max_active_per_key": 10**6}
    app = create_app(service_settings(url, tmp, **limits), start_workers=False)
    app.state.services.guard.resolve = lambda host, port: ["93.184.215.14"]
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {(tmp / 'admin.key').read_text().strip()}"
        yield client


def probe_fuzz(backend: str, minimum: int) -> dict:
    statuses: Counter[int] = Counter()
    routes: Counter[str] = Counter()
    problems: list[dict] = []
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp, service(backend, Path(tmp)) as client:

        def send(request: HostileRequest) -> None:
            headers = dict(request.headers)
            if request.body is not None:
                headers.setdefault("content-type", b"application/json")
            r = client.request(request.method, request.path, headers=headers, content=request.body)
            statuses[r.status_code] += 1
            routes[request.route] += 1
            if problem := well_formed_error(r.status_code, r.content):
                problems.append({"route": request.route, "path": request.path[:120], "problem": problem[:300]})

        swept = sweep()
        for request in swept:
            send(request)

        @settings(
            max_examples=max(minimum - len(swept), 0) + 200,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(hostile_request())
        def generated(request: HostileRequest) -> None:
            send(request)

        generated()
        listing = client.get("/v1/audits", params={"limit": 200})
        stored = listing.json()["data"] if listing.status_code == 200 else []
        unreadable = [a["id"] for a in stored if client.get(f"/v1/audits/{a['id']}").status_code != 200]
    return {
        "backend": backend,
        "requests": sum(statuses.values()),
        "swept": len(swept),
        "generated": sum(statuses.values()) - len(swept),
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "malformed_errors": len(problems),
        "problems": problems[:20],
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "routes": dict(sorted(routes.items())),
        "audits_stored": len(stored),
        "list_status_after": listing.status_code,
        "audits_unreadable": len(unreadable),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--fuzz", type=int, default=2000, help="at least this many requests per backend")
    args = parser.parse_args()
    started = time.monotonic()
    ssrf = probe_ssrf()
    print(f"ssrf: {ssrf['forms_tried']} forms, {ssrf['admitted_non_public']} non-public admitted", file=sys.stderr)
    backends = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
    fuzz = []
    for backend in backends:
        result = probe_fuzz(backend, args.fuzz)
        print(
            f"fuzz {backend}: {result['requests']} requests, {result['server_errors']} server errors, "
            f"{result['malformed_errors']} malformed",
            file=sys.stderr,
        )
        fuzz.append(result)
    report = {
        "what": "SSRF guard decisions over IP-literal host forms, and hostile requests on every route of the API",
        "ssrf": ssrf,
        "fuzz": fuzz,
        "backends": backends,
        "postgresql": "tested" if POSTGRES_URL else "not tested (HSPI_TEST_POSTGRES_URL is not set)",
        "host": {"python": host_platform.python_version(), "cpus": os.cpu_count()},
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security.json").write_text(json.dumps(report, indent=2) + "\n")
    ok = ssrf["admitted_non_public"] == 0 and all(f["server_errors"] == 0 and f["malformed_errors"] == 0 for f in fuzz)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
