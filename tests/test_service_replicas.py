"""Replicas of the audit service on one database share their limits, and a slow request body is cut off.

In process: claims of two engines on one database (as two processes would hold) never put a host
over its limit; the rate bucket of a key is one row that every replica draws on (PostgreSQL); a
body that stalls or trickles after its headers gets a 408 and a closed connection.  Then the real
thing (PostgreSQL, slow): three `hspi serve` processes, the per-host limit measured at the target,
and one replica killed with SIGKILL mid-audit, whose audits another replica takes over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from reproducing import full_prompt, serving_platform
from servers import free_port, serve_asgi, serve_handler, wait_for_http
from service_support import BACKENDS, POSTGRES_URL, database_url, serve_app, service_settings, wait_for

from hspi.api import store
from hspi.api.app import create_app
from hspi.api.db import Database
from hspi.api.rate_buckets import DatabaseRateLimiter
from hspi.audit import AuditReport, AuditSettings
from hspi.collector.target_server import create_target_app

FINAL = ("done", "failed", "cancelled", "interrupted")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="HSPI_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)"
)


def settings_for(url: str, seed: int = 0) -> AuditSettings:
    return AuditSettings(endpoint=url, model="lm-small", claim={"dtype": "fp32"}, budget_queries=8, seed=seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_claims_from_two_processes_never_put_a_host_over_its_limit(backend: str, tmp_path: Path) -> None:
    url = database_url(backend, tmp_path)
    first, second = Database(url), Database(url)  # two engines: what two replicas hold
    first.migrate()
    hosts = [f"127.0.0.1:{9000 + h}" for h in range(16)]
    audits = [(store.create_audit(first, settings_for(f"http://{o}/v1", i), origin=o)[0].id, o)
              for i in range(4) for o in hosts]  # fmt: skip
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def replica(n: int) -> None:  # every thread tries every audit, each in its own order: 16 races for 2 slots
        db = (first, second)[n % 2]
        order = sorted(audits, key=lambda a: hash((n, a[0])))
        barrier.wait()
        for audit_id, origin in order:
            if store.claim(db, audit_id, origin, f"worker-{n}", 30.0, per_host=2) is not None:
                with lock:
                    taken.append((audit_id, origin))

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(taken) == len(set(taken))
    assert Counter(o for _, o in taken) == dict.fromkeys(hosts, 2)
    assert store.running_by_origin(first) == dict.fromkeys(hosts, 2)
    # a full host's audits are not even offered; another host's are
    other = store.create_audit(first, settings_for("http://127.0.0.1:8/v1"), origin="127.0.0.1:8")[0].id
    assert [o for _, o, _ in store.queued(second, limit=100, per_host=2)] == ["127.0.0.1:8"]
    assert store.claim(second, other, "127.0.0.1:8", "worker-x", 30.0, per_host=2) is not None
    # an ended audit frees its slot for whichever replica asks next
    done_id, origin = taken[0]
    assert store.finish(first, done_id, store.get_audit(first, done_id).worker, "done")
    free = next(i for i, o in audits if o == origin and (i, o) not in taken)
    assert store.claim(second, free, origin, "worker-y", 30.0, per_host=2) is not None
    assert store.running_by_origin(second)[origin] == 2
    first.dispose()
    second.dispose()


@needs_postgres
def test_replicas_draw_on_one_rate_bucket_per_key(tmp_path: Path) -> None:
    url = database_url("postgresql", tmp_path)
    first, second = Database(url), Database(url)
    first.migrate()
    a, b = DatabaseRateLimiter(first, per_minute=6, burst=4), DatabaseRateLimiter(second, per_minute=6, burst=4)
    assert [(a, b)[i % 2].take("key1") for i in range(4)] == [0.0] * 4
    wait = b.take("key1")
    assert 0 < wait <= 10.0 + 1e-6  # one token every 10 s, whichever replica is asked
    assert a.take("key1") > 0
    assert a.take("key2") == 0.0  # another key has its own bucket
    first.dispose()
    second.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_replicas_starting_together_make_one_admin_key(backend: str, tmp_path: Path) -> None:
    url = database_url(backend, tmp_path)
    Database(url).migrate()
    made: list[bool] = []
    barrier = threading.Barrier(6)

    def start(n: int) -> None:
        db = Database(url)
        with db.writing():  # connected and warm: the race is between transactions, not connections
            pass
        barrier.wait()
        made.append(store.add_first_key(db, f"k{n}", "bootstrap admin", "0" * 64, ["admin"]))
        db.dispose()

    threads = [threading.Thread(target=start, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(made) == [False] * 5 + [True]
    assert store.count_keys(Database(url)) == 1


def raw_request(
    port: int, head: bytes, body_parts: list[bytes], every_s: float, timeout_s: float
) -> tuple[bytes, float]:
    """Send `head`, then `body_parts` `every_s` apart until the server answers; (everything the server sent
    until it closed, seconds).  A part sent after the server closed is answered by a TCP reset, which ends
    the reading too: what arrived before it was read already."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        received = b""
        sock.settimeout(every_s)
        for part in body_parts:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return received, time.monotonic() - started
                received += chunk
                break  # the server answered: a client stops sending the body
            except TimeoutError:
                pass
            except ConnectionResetError:
                return received, time.monotonic() - started
            try:
                sock.sendall(part)
            except OSError:
                break
        sock.settimeout(max(0.1, timeout_s - (time.monotonic() - started)))
        while True:
            try:
                chunk = sock.recv(65536)  # a TimeoutError here: the server kept the connection open
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return received, time.monotonic() - started
            received += chunk


def test_a_stalled_or_trickled_request_body_gets_408_and_a_closed_connection(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path, body_timeout_s=1.0)
    with serve_app(create_app(settings, start_workers=False)) as base:
        port = int(base.rsplit(":", 1)[1])
        key = (tmp_path / "admin.key").read_text().strip()
        head = (
            f"POST /v1/audits HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        ).encode()
        stalled, stalled_s = raw_request(port, head, [b'{"endpoint": '], every_s=0.1, timeout_s=10)
        trickled, trickled_s = raw_request(port, head, [b" "] * 60, every_s=0.1, timeout_s=10)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:  # still serving
            assert client.get("/v1/audits").status_code == 200
    for answer, seconds in ((stalled, stalled_s), (trickled, trickled_s)):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request body not received within 1 s" in answer
        assert 0.9 <= seconds < 4.0  # the whole body's deadline, not one reset by every byte


# -- three `hspi serve` processes on one PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="module")
def target() -> str:
    with serve_asgi(create_target_app("lm-small", serving_platform("lm-small"))) as url:
        httpx.post(url + "/completions", json={"prompt": full_prompt(), "max_tokens": 1}, timeout=60)
        yield url


@pytest.mark.slow
@needs_postgres
def test_replicas_share_the_per_host_limit_and_take_over_a_killed_replicas_audits(tmp_path: Path, target: str) -> None:
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def counting_proxy(request, reply):  # type: ignore[no-untyped-def]
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.2)  # slow enough that audits overlap and the kill lands mid-audit
            upstream = httpx.post(
                target + request.path[len("/v1") :], content=request.body,
                headers={"content-type": "application/json"}, timeout=30,
            )  # fmt: skip
        finally:
            with lock:
                in_flight[0] -= 1
        reply.send(upstream.status_code, upstream.content)

    database = database_url("postgresql", tmp_path)
    env = {
        **os.environ,
        "HSPI_LEASE_S": "2",
        "HSPI_WORKERS": "4",
        "HSPI_PER_HOST": "2",
        "HSPI_ALLOW_HOSTS": "127.0.0.0/8",
        "HSPI_RATE_PER_MINUTE": "100000",
        "HSPI_RATE_BURST": "10000",
        "HSPI_BOOTSTRAP_KEY_FILE": str(tmp_path / "admin.key"),
        "HSPI_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
    }
    ports = [free_port() for _ in range(3)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen] = []
    db = Database(database)
    try:
        for port, base in zip(ports, bases):  # one after the other: the first makes the admin key
            command = [sys.executable, "-m", "hspi", "serve", "--database", database, "--port", str(port)]
            with open(tmp_path / f"serve-{port}.log", "a") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log))
            wait_for_http(base + "/readyz", 120, alive=lambda p=procs[-1]: p.poll() is None)
        key = (tmp_path / "admin.key").read_text().strip()
        clients = [httpx.Client(base_url=b, headers={"Authorization": f"Bearer {key}"}, timeout=30) for b in bases]
        with serve_handler(counting_proxy) as (url, _):
            ids = [clients[i % 3].post("/v1/audits", json={"endpoint": url, "budget": 12, "seed": i}).json()["id"]
                   for i in range(8)]  # fmt: skip
            assert len(set(ids)) == 8
            running_most = [0]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    running_most[0] = max(running_most[0], *store.running_by_origin(db).values(), 0)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def victim() -> tuple[int, str] | None:  # a replica running an audit with stored answers
                for audit_id in ids:
                    audit = store.get_audit(db, audit_id)
                    if audit.status == "running" and audit.answers >= 1 and audit.worker:
                        pid = int(audit.worker.split(":")[1])
                        if pid in [p.pid for p in procs]:
                            return pid, audit_id
                return None

            pid, _ = wait_for(victim, 60, "a running audit with stored answers", every_s=0.05)
            os.kill(pid, signal.SIGKILL)
            dead = next(i for i, p in enumerate(procs) if p.pid == pid)
            procs[dead].wait(10)
            held = [
                i
                for i in ids
                if (a := store.get_audit(db, i)).status == "running" and a.worker.split(":")[1] == str(pid)
            ]
            at_kill = {i: store.answers(db, i) for i in held}
            alive = clients[(dead + 1) % 3]
            ended = {
                i: wait_for(lambda i=i: (a := alive.get(f"/v1/audits/{i}").json())["status"] in FINAL and a, 120, i)
                for i in ids
            }
            sampling.set()
            sampler.join(5)
            stored = {i: [r.index for r in store.answers(db, i)] for i in ids}
        for c in clients:
            c.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(30)
        db.dispose()
    assert held, "the killed replica held no audit"
    assert most[0] <= 2 and running_most[0] <= 2, (most[0], running_most[0])  # one host, limit 2, three replicas
    for audit_id, audit in ended.items():
        assert audit["status"] == "done", (audit_id, audit["error"])
        assert stored[audit_id] == list(range(audit["progress"]["answers"]))  # each answer stored once
    for audit_id in held:  # taken over by another replica after the lease ran out, from its stored answers
        report = AuditReport.model_validate(ended[audit_id]["report"])
        kept = at_kill[audit_id]
        assert ended[audit_id]["attempts"] == 2
        assert [(r.probe_id, r.values) for r in report.evidence[: len(kept)]] == [(r.probe_id, r.values) for r in kept]
