"""Durable background audits: stored answers survive a stop, a crash or a kill of the API process.

In process: a clean stop gives running audits back to the queue and a new pool resumes them from
their answers (no probe asked twice, the budget counting what was spent); a dead worker's audit is
taken back once its lease runs out; a crash loop, or `on_restart=interrupt`, ends it `interrupted`
with its evidence; misbehaving targets fail only their own audits.  Then the real thing: `hspi serve`
killed with SIGKILL mid-run and started again, every audit accounted for.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from reproducing import full_prompt, serving_platform
from servers import free_port, serve_asgi, serve_handler, wait_for_http
from service_support import BACKENDS, database_url, wait_for

from hspi.api import store
from hspi.api.db import Audit, AuditAnswer, Database
from hspi.api.security import EndpointGuard, Vault
from hspi.api.workers import AuditWorkers
from hspi.audit import AuditReport, AuditSettings, run_audit
from hspi.collector.target_server import create_target_app

FINAL = ("done", "failed", "cancelled", "interrupted")


@pytest.fixture(scope="module")
def target() -> str:
    with serve_asgi(create_target_app("lm-small", serving_platform("lm-small"))) as url:
        httpx.post(url + "/completions", json={"prompt": full_prompt(), "max_tokens": 1}, timeout=60)
        yield url


class Counting(httpx.HTTPTransport):
    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(json.loads(request.content).get("prompt"))
        return super().handle_request(request)


def pool(db: Database, tmp_path: Path, seen: list | None = None, **kwargs) -> AuditWorkers:  # type: ignore[no-untyped-def]
    options = dict(workers=4, per_host=4, lease_s=1.0)
    options.update(kwargs)
    factory = (lambda: Counting(seen)) if seen is not None else None
    return AuditWorkers(
        db,
        Vault.from_settings(None, tmp_path / "k"),
        EndpointGuard(["127.0.0.0/8"]),
        transport_factory=factory,
        **options,
    )


def long_settings(url: str, budget: int = 8) -> AuditSettings:
    """Spends its whole budget: random order, and more answers needed than the budget allows."""
    return AuditSettings(
        endpoint=url,
        model="lm-small",
        claim={"dtype": "fp32"},
        budget_queries=budget,
        seed=5,
        order="random",
        min_answers=50,
    )


def dead_worker_audit(db: Database, settings: AuditSettings, answers: list, *, attempts: int) -> str:
    """An audit a crashed process left: running, its lease run out, some answers stored."""
    audit, _ = store.create_audit(db, settings, origin="127.0.0.1:1")
    with db.writing() as session:
        row = session.get(Audit, audit.id)
        row.status, row.worker, row.attempts = "running", "dead-process", attempts
        row.lease_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
        row.queries, row.answers = answers[-1].queries_so_far, len(answers)
        for record in answers:
            session.add(AuditAnswer(audit_id=audit.id, idx=record.index, record=record.model_dump(mode="json")))
    return audit.id


def final(db: Database, audit_id: str, timeout_s: float = 30) -> Audit:
    return wait_for(lambda: (a := store.get_audit(db, audit_id)).status in FINAL and a, timeout_s, f"audit {audit_id}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_workers_audit_resumes_from_its_answers(backend: str, tmp_path: Path, target: str) -> None:
    db = Database(database_url(backend, tmp_path))
    db.migrate()
    before = run_audit(long_settings(target, budget=3)).evidence
    audit_id = dead_worker_audit(db, long_settings(target), before, attempts=1)
    seen: list = []
    workers = pool(db, tmp_path, seen)
    workers.start()
    try:
        audit = final(db, audit_id)
    finally:
        workers.stop()
    report = AuditReport.model_validate(audit.report)
    assert audit.status == "done" and audit.attempts == 2 and report.queries == 8 and len(seen) == 5
    assert [r.model_dump() for r in report.evidence[:3]] == [
        r.model_copy(update={"leading": report.evidence[i].leading}).model_dump() for i, r in enumerate(before)
    ]
    probes = [r.probe_id for r in report.evidence]
    assert len(set(probes)) == len(probes) == 8
    assert [r.index for r in store.answers(db, audit_id)] == list(range(8))  # each answer stored once
    db.dispose()


def test_a_crash_loop_ends_interrupted_with_the_stored_evidence(tmp_path: Path, target: str) -> None:
    db = Database(database_url("sqlite", tmp_path))
    db.migrate()
    before = run_audit(long_settings(target, budget=3)).evidence
    looping = dead_worker_audit(db, long_settings(target), before, attempts=3)
    empty = dead_worker_audit(db, long_settings(target), [before[0].model_copy(update={"complete": False})], attempts=3)
    seen: list = []
    workers = pool(db, tmp_path, seen, max_attempts=3)
    workers.start()
    try:
        audit, other = final(db, looping), final(db, empty)
    finally:
        workers.stop()
    assert seen == []  # nothing asked again
    report = AuditReport.model_validate(audit.report)
    assert audit.status == "interrupted" and report.stop == "interrupted" and "given up" in audit.error
    assert [r.probe_id for r in report.evidence] == [r.probe_id for r in before] and report.queries == 3
    assert report.verdict != "consistent"
    assert other.status == "interrupted" and AuditReport.model_validate(other.report).status == "no-evidence"


def test_on_restart_interrupt_ends_restarted_audits_with_their_evidence(tmp_path: Path, target: str) -> None:
    db = Database(database_url("sqlite", tmp_path))
    db.migrate()
    before = run_audit(long_settings(target, budget=2)).evidence
    audit_id = dead_worker_audit(db, long_settings(target), before, attempts=1)
    workers = pool(db, tmp_path, [], on_restart="interrupt")
    workers.start()
    try:
        audit = final(db, audit_id)
    finally:
        workers.stop()
    assert audit.status == "interrupted" and "service restarted" in audit.error
    assert len(AuditReport.model_validate(audit.report).evidence) == 2


def test_a_clean_stop_requeues_running_audits_and_the_next_pool_resumes_them(tmp_path: Path, target: str) -> None:
    db = Database(database_url("sqlite", tmp_path))
    db.migrate()
    slow = threading.Event()

    def proxy(request, reply):  # type: ignore[no-untyped-def]
        if slow.is_set():
            time.sleep(0.3)
        upstream = httpx.post(
            target + request.path[len("/v1") :],
            content=request.body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        reply.send(upstream.status_code, upstream.content)

    with serve_handler(proxy) as (url, seen):
        slow.set()
        ids = [
            store.create_audit(db, long_settings(url, budget=12).model_copy(update={"seed": i}), origin="127.0.0.1:x")[
                0
            ].id
            for i in range(3)
        ]
        workers = pool(db, tmp_path, lease_s=5.0)
        workers.start()
        wait_for(lambda: all(store.get_audit(db, i).answers >= 2 for i in ids), 30, "answers of every audit")
        workers.stop()
        stopped = {i: store.answers(db, i) for i in ids}
        assert all(store.get_audit(db, i).status == "queued" for i in ids)  # given back, not lost
        slow.clear()
        workers = pool(db, tmp_path, lease_s=5.0)
        workers.start()
        try:
            ended = [final(db, i) for i in ids]
        finally:
            workers.stop()
    for audit in ended:
        report = AuditReport.model_validate(audit.report)
        assert audit.status == "done" and report.queries == 12 and len(report.evidence) == 12
        kept = stopped[audit.id]
        assert [r.values for r in report.evidence[: len(kept)]] == [r.values for r in kept]
        assert len({r.probe_id for r in report.evidence}) == 12
    assert seen.count == 36  # 3 x 12: nothing asked twice


def test_misbehaving_targets_fail_only_their_own_audits(tmp_path: Path, target: str) -> None:
    db = Database(database_url("sqlite", tmp_path))
    db.migrate()

    def garbage(request, reply):  # type: ignore[no-untyped-def]
        reply.send(200, b"<html>surprise</html>", content_type="text/html")

    def broken(request, reply):  # type: ignore[no-untyped-def]
        reply.send(500, {"error": "down"})

    def silent(request, reply):  # type: ignore[no-untyped-def]
        reply.stall(10)

    with serve_handler(garbage) as (g, _), serve_handler(broken) as (b, _), serve_handler(silent) as (s, _):
        bad = {
            url: store.create_audit(
                db, AuditSettings(endpoint=url, budget_queries=4, timeout_s=0.5, retries=1), origin=url
            )[0].id
            for url in (g, b, s)
        }
        good = [
            store.create_audit(
                db, AuditSettings(endpoint=target, claim={"dtype": "fp32"}, budget_queries=128, seed=i), origin="good"
            )[0].id
            for i in range(4)
        ]
        workers = pool(db, tmp_path, workers=8)
        workers.start()
        try:
            ended = {i: final(db, i) for i in [*bad.values(), *good]}
        finally:
            workers.stop()
    assert all(ended[i].status == "done" and ended[i].verdict == "consistent" for i in good)
    assert all(ended[i].status == "failed" and ended[i].error.startswith("target-error") for i in bad.values())
    assert "no answer within 0.5s" in ended[bad[s]].error


@pytest.mark.slow
def test_the_api_process_killed_mid_run_restarts_and_accounts_for_every_audit(tmp_path: Path, target: str) -> None:
    """SIGKILL `hspi serve` while audits run; start it again; every audit ends, none lost or run twice."""

    def proxy(request, reply):  # type: ignore[no-untyped-def]
        time.sleep(0.25)  # slow enough that the kill lands mid-audit
        upstream = httpx.post(
            target + request.path[len("/v1") :],
            content=request.body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        reply.send(upstream.status_code, upstream.content)

    database = f"sqlite:///{tmp_path / 'service.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # polling nine audits every 50 ms is far above the default per-key rate: lift it, or a 429 body
    # (no "status") would stand in for an audit
    env = {
        **os.environ,
        "HSPI_LEASE_S": "1",
        "HSPI_ALLOW_HOSTS": "127.0.0.0/8",
        "HSPI_PER_HOST": "3",
        "HSPI_RATE_PER_MINUTE": "100000",
        "HSPI_RATE_BURST": "10000",
        "HSPI_BOOTSTRAP_KEY_FILE": str(tmp_path / "admin.key"),
        "HSPI_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
    }
    command = [sys.executable, "-m", "hspi", "serve", "--database", database, "--port", str(port)]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "a"))
        wait_for_http(base + "/readyz", 90, alive=lambda: proc.poll() is None)
        return proc

    with serve_handler(proxy) as (url, seen):
        proc = start()
        key = (tmp_path / "admin.key").read_text().strip()
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        ids = [http.post("/v1/audits", json={"endpoint": url, "budget": 16, "seed": i}).json()["id"] for i in range(9)]
        assert len(set(ids)) == 9

        def mid_run() -> bool:
            audits = [http.get(f"/v1/audits/{i}").json() for i in ids]
            return any(a["status"] == "running" and a["progress"]["answers"] >= 1 for a in audits)

        wait_for(mid_run, 60, "an audit with stored answers to be running", every_s=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        db = Database(database)
        at_kill = {i: store.answers(db, i) for i in ids}
        states = {i: store.get_audit(db, i).status for i in ids}
        assert "running" in states.values() and any(at_kill.values())
        proc = start()
        try:
            ended = {
                i: wait_for(
                    lambda i=i: (a := http.get(f"/v1/audits/{i}").json())["status"] in FINAL and a, 90, f"audit {i}"
                )
                for i in ids
            }
            listed = http.get("/v1/audits", params={"limit": 200}).json()["data"]
        finally:
            proc.terminate()
            proc.wait(20)
            http.close()
    assert sorted(a["id"] for a in listed) == sorted(ids)  # none lost, none duplicated
    for audit_id, audit in ended.items():
        assert audit["status"] == "done", (audit_id, states[audit_id], audit["error"])
        report = AuditReport.model_validate(audit["report"])
        kept = at_kill[audit_id]
        assert [(r.probe_id, r.values) for r in report.evidence[: len(kept)]] == [(r.probe_id, r.values) for r in kept]
        complete = [r.probe_id for r in report.evidence if r.complete]
        assert len(set(complete)) == len(complete) and report.queries <= 16
        assert [r.index for r in store.answers(db, audit_id)] == list(range(len(report.evidence)))
    resumed = [i for i in ids if states[i] == "running"]
    assert all(ended[i]["attempts"] == 2 for i in resumed)
    db.dispose()
