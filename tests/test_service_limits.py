"""Per-key and per-host limits of the audit service, and keys taking turns at the queue.

The caps and the per-host keying in process, no sockets, no DNS.  The turns: on the store (two
engines on one database, as two replicas hold) and through a worker pool whose targets on
127.0.0.1 stall until released: a key with many queued audits never holds back another key's one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from servers import serve_handler
from service_support import BACKENDS, database_url, wait_for
from test_service_inputs import api

from hspi.api import store
from hspi.api.db import Audit, Database
from hspi.api.security import EndpointGuard, Vault
from hspi.api.workers import AuditWorkers
from hspi.audit import AuditSettings


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_key_at_its_cap_of_active_audits_gets_429(backend: str, tmp_path: Path) -> None:
    with api(backend, tmp_path, max_active_per_key=3) as client:
        ids = [
            client.post(
                "/v1/audits", json={"endpoint": f"http://127.0.0.1:{9000 + i}/v1"}, headers={"Idempotency-Key": f"k{i}"}
            )
            for i in range(3)
        ]
        assert [r.status_code for r in ids] == [202, 202, 202]
        r = client.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"})
        assert r.status_code == 429, r.text
        assert "has 3 audits queued or running; the limit is 3" in r.json()["detail"]
        # a retry of one already made is still answered, and an ended audit frees its slot
        retry = client.post(
            "/v1/audits", json={"endpoint": "http://127.0.0.1:9000/v1"}, headers={"Idempotency-Key": "k0"}
        )
        assert retry.status_code == 200 and retry.json()["id"] == ids[0].json()["id"]
        assert client.post(f"/v1/audits/{ids[0].json()['id']}/cancel").status_code == 202
        assert client.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"}).status_code == 202
        assert client.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"}).status_code == 429


def test_per_host_limits_are_keyed_by_the_checked_address_not_the_spelling(tmp_path: Path) -> None:
    guard = EndpointGuard(["127.0.0.0/8"], resolver=lambda host, port: ["127.0.0.1"])
    spellings = ["http://127.0.0.1:8801/v1", "http://localhost:8801/v1", "http://[::ffff:127.0.0.1]:8801/v1",
                 "http://2130706433:8801/v1", "http://LOCALHOST.:8801/v1"]  # fmt: skip
    origins = {guard.origin(guard.check(url), guard.split(url)[1]) for url in spellings}
    assert origins == {"127.0.0.1:8801"}
    assert EndpointGuard.origin(["2001:db8::2", "2001:db8::1", "93.184.215.14"], 443) == "93.184.215.14:443"
    assert EndpointGuard.origin(["2606:4700::1111"], 80) == "[2606:4700::1111]:80"
    with api("sqlite", tmp_path) as client:
        r = client.post("/v1/audits", json={"endpoint": "http://service.example.com/v1"})
        assert r.status_code == 202, r.text
        with client.app.state.services.db.reading() as session:
            assert session.get(Audit, r.json()["id"]).origin == "93.184.215.14:80"


def keyed_audits(db: Database, key: str, url: str, n: int) -> list[str]:
    """`n` audits of `key`, each at its own origin (no per-host limit in the way), created in order."""
    ids = []
    for i in range(n):
        settings = AuditSettings(endpoint=url, budget_queries=4, timeout_s=30, retries=0)
        ids.append(store.create_audit(db, settings, origin=f"{key}-{i}", owner=key)[0].id)
        time.sleep(0.002)  # distinct creation times: "oldest first" is then one order on every database
    return ids


def two_keys(db: Database) -> None:
    for key in ("A", "B"):
        store.add_key(db, key, f"key {key}", "0" * 64, ["write"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_take_turns_at_the_queue_over_replicas(backend: str, tmp_path: Path) -> None:
    url = database_url(backend, tmp_path)
    first, second = Database(url), Database(url)  # two engines: what two replicas hold
    first.migrate()
    two_keys(first)
    a = keyed_audits(first, "A", "http://127.0.0.1:9/v1", 6)
    (b,) = keyed_audits(first, "B", "http://127.0.0.1:9/v1", 1)
    order = store.queued(second, limit=100, per_host=2)
    assert [k for _, _, k in order] == ["A", "B", "A", "A", "A", "A", "A"]  # turns; A's first is the oldest
    for audit_id in a[:2]:  # one replica starts two of A's
        assert store.claim(first, audit_id, store.get_audit(first, audit_id).origin, "w1", 30.0, per_host=2)
    # the other replica sees them running: B's audit is next, then A's in creation order
    assert [i for i, _, _ in store.queued(second, limit=100, per_host=2)] == [b, *a[2:]]
    # a pool whose slots for one key are taken offers none of that key's audits, another's still
    assert [k for _, _, k in store.queued(second, limit=100, per_host=2, worker="w1", per_key=2)] == ["B"]
    assert [k for _, _, k in store.queued(second, limit=100, per_host=2, worker="w2", per_key=2)][:2] == ["B", "A"]
    # equal turns: the key whose last audit started longest ago goes first
    assert store.claim(second, b, store.get_audit(first, b).origin, "w2", 30.0, per_host=2)
    (b2,) = keyed_audits(first, "B", "http://127.0.0.1:9/v1", 1)
    assert store.finish(first, a[0], "w1", "done") and store.finish(first, b, "w2", "done")
    assert [i for i, _, _ in store.queued(second, limit=100, per_host=2)][:2] == [b2, a[2]]  # A runs 1, B none
    assert store.finish(first, a[1], "w1", "done")
    assert [i for i, _, _ in store.queued(second, limit=100, per_host=2)][:2] == [a[2], b2]  # A started before B
    first.dispose()
    second.dispose()


def pool(db: Database, tmp_path: Path, workers: int) -> AuditWorkers:
    return AuditWorkers(
        db, Vault.from_settings(None, tmp_path / "k"), EndpointGuard(["127.0.0.0/8"]), workers=workers, per_host=2
    )


def statuses(db: Database, ids: list[str]) -> list[str]:
    return [store.get_audit(db, i).status for i in ids]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_key_leaves_a_slot_for_another_keys_audit(backend: str, tmp_path: Path) -> None:
    """3 workers: key A's many stalling audits hold 2 of them; B's audit starts at once in the third."""
    db = Database(database_url(backend, tmp_path))
    db.migrate()
    two_keys(db)

    def stalling(request, reply):  # type: ignore[no-untyped-def]
        reply.stall(30)

    with serve_handler(stalling) as (url, seen):
        a = keyed_audits(db, "A", url, 5)
        workers = pool(db, tmp_path, workers=3)
        workers.start()
        try:
            wait_for(lambda: statuses(db, a).count("running") == 2, 20, "two of A's audits to run")
            time.sleep(1.5)  # three dispatch rounds: A takes no third slot
            assert sorted(statuses(db, a)) == ["queued"] * 3 + ["running"] * 2
            (b,) = keyed_audits(db, "B", url, 1)
            workers.submit(b)
            wait_for(lambda: store.get_audit(db, b).status == "running", 5, "B's audit to start")
            assert sorted(statuses(db, a)) == ["queued"] * 3 + ["running"] * 2
        finally:
            seen.stop.set()  # the stalled requests end, and with them the running audits
            workers.stop()
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_keys_audit_takes_the_next_free_slot(backend: str, tmp_path: Path) -> None:
    """1 worker: when A's running audit ends, B's audit starts before A's older queued ones."""
    db = Database(database_url(backend, tmp_path))
    db.migrate()
    two_keys(db)
    release = threading.Event()

    def stall_then_fail(request, reply):  # type: ignore[no-untyped-def]
        release.wait(30)
        reply.send(500, {"error": "gave up"})

    def stalling(request, reply):  # type: ignore[no-untyped-def]
        reply.stall(30)

    with serve_handler(stall_then_fail) as (a_url, a_seen), serve_handler(stalling) as (b_url, b_seen):
        a = keyed_audits(db, "A", a_url, 4)
        workers = pool(db, tmp_path, workers=1)
        workers.start()
        try:
            wait_for(lambda: a_seen.count >= 1, 60, "A's first audit to reach its target")
            (b,) = keyed_audits(db, "B", b_url, 1)
            workers.submit(b)
            time.sleep(1.0)
            assert statuses(db, [*a, b]) == ["running", "queued", "queued", "queued", "queued"]  # no free slot
            release.set()  # A's running audit fails: its slot is free
            wait_for(lambda: store.get_audit(db, b).status == "running", 10, "B's audit to start")
            assert statuses(db, a) == ["failed", "queued", "queued", "queued"]
        finally:
            release.set()
            b_seen.stop.set()
            workers.stop()
    db.dispose()
