"""The model-agnostic audit through the service (`POST /v1/audits` with `agnostic: true`, a real uvicorn on
127.0.0.1) and through `hspi scan` (a target with `agnostic: true`): the checks of a real loopback target,
the budget of 8 queries, idempotency, cancel, and bad requests refused in one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from servers import serve_asgi, serve_handler
from service_support import BACKENDS, admin_key, client, database_url, make_key, serve_app, service_settings, wait_final

from hspi.api.app import create_app
from hspi.api.db import Database
from hspi.api.scan import ScanOptions, load_targets, run_scan
from hspi.api.scan_report import write_html
from hspi.api.schemas import AgnosticReportPublic
from hspi.api.security import Vault
from hspi.collector.target_server import create_target_app
from hspi.errors import ConfigError
from hspi.platform import Platform

EXPECTED = {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"}


@pytest.fixture(scope="module")
def bf16_target() -> str:
    """`hspi target serve`'s app for lm-small computing in bf16 on this CPU (real torch arithmetic)."""
    with serve_asgi(create_target_app("lm-small", Platform.parse("cpu:native/bf16/torch-eager"))) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(base URL, write key, read key) of a fresh service."""
    app = create_app(service_settings(database_url(request.param, tmp_path), tmp_path))
    with serve_app(app) as base:
        admin = admin_key(tmp_path)
        yield base, make_key(base, admin, ["write"]), make_key(base, admin, ["read"])


def checks_of(report: dict) -> dict[str, str]:
    return {name: check["verdict"] for name, check in report["checks"].items()}


@pytest.mark.slow
def test_an_agnostic_audit_through_the_service_reads_the_checks_within_8_queries(service, bf16_target: str) -> None:  # type: ignore[no-untyped-def]
    base, write, read = service
    body = {"endpoint": bf16_target, "agnostic": True, "timeout_s": 60}
    with client(base, write) as c:
        r = c.post("/v1/audits", json=body, headers={"Idempotency-Key": "agnostic-1"})
        assert r.status_code == 202, r.text
        created = r.json()
        assert created["kind"] == "model-agnostic" and created["model"] == "-" and created["claim"] == {}
        assert created["progress"]["budget_queries"] == 8  # the model-agnostic default, not the reference 64
        again = c.post("/v1/audits", json=body, headers={"Idempotency-Key": "agnostic-1"})
        assert again.status_code == 200 and again.json()["id"] == created["id"]
    with client(base, read) as c:
        done = wait_final(c, created["id"], timeout_s=120)
        assert done["status"] == "done" and done["report"] is None and done["verdict"] is None, done
        report = AgnosticReportPublic.model_validate(done["agnostic_report"])
        assert checks_of(done["agnostic_report"]) == EXPECTED, report.checks
        assert report.checks["precision"].probability >= 0.99
        assert report.stop == "plan-done" and report.tier == "topk20" and report.served_model == "lm-small"
        assert report.queries <= 8 and report.queries == done["progress"]["queries"]
        assert done["progress"]["answers"] == len(report.evidence)
        assert [e.step for e in report.evidence][:3] == ["models", "first", "second"]
        answers = c.get(f"/v1/audits/{created['id']}/answers")
        assert answers.status_code == 409 and "model-agnostic" in answers.json()["detail"]
        trace = c.get(f"/v1/audits/{created['id']}/posteriors").json()
        assert trace["data"] == [] and "model-agnostic" in trace["note"]
        listed = c.get("/v1/audits", params={"model": "-"}).json()["data"]
        assert [a["id"] for a in listed] == [created["id"]] and listed[0]["kind"] == "model-agnostic"


def slow_completion(request, reply):  # type: ignore[no-untyped-def]
    """An OpenAI-like endpoint that takes 0.4 s a request and shows text only."""
    time.sleep(0.4)
    if request.method == "GET":
        reply.send(404, {"detail": "Not Found"})
        return
    reply.send(200, {"id": "x", "choices": [{"text": "x", "index": 0, "logprobs": None}]})


@pytest.mark.slow
def test_cancel_stops_an_agnostic_audit_between_requests(tmp_path: Path) -> None:
    app = create_app(service_settings(database_url("sqlite", tmp_path), tmp_path))
    with serve_app(app) as base, serve_handler(slow_completion) as (url, seen):
        write = make_key(base, admin_key(tmp_path), ["write"])
        with client(base, write) as c:
            audit = c.post("/v1/audits", json={"endpoint": url, "agnostic": True}).json()
            deadline = time.monotonic() + 30
            while c.get(f"/v1/audits/{audit['id']}").json()["progress"]["queries"] < 1:
                assert time.monotonic() < deadline, "the audit never sent a query"
                time.sleep(0.05)
            assert c.post(f"/v1/audits/{audit['id']}/cancel").status_code == 202
            done = wait_final(c, audit["id"])
    assert done["status"] == "cancelled" and "cancelled" in done["error"]
    report = done["agnostic_report"]
    assert report["stop"] == "interrupted" and report["queries"] < 8
    # text only: precision cannot be read, and says why rather than guess
    assert report["checks"]["precision"]["verdict"] == "unknown" and report["checks"]["precision"]["reason"]
    assert len(seen.requests) == report["queries"]  # nothing sent after the cancel took effect


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"agnostic": True, "model": "lm-small"}, "model does not apply to a model-agnostic audit"),
        ({"agnostic": True, "claim": "dtype=fp32"}, "claim does not apply"),
        ({"agnostic": True, "api": "logits"}, "cannot be logits"),
        ({"agnostic": True, "max_tier": "logits"}, "cannot be logits"),
        ({"agnostic": True, "budget": 0}, "budget must be between 1 and"),
        ({"agnostic": True, "endpoint": "http://169.254.169.254/v1"}, "metadata"),
        ({"agnostic": True, "endpoint": "ftp://127.0.0.1/v1"}, "http(s)"),
        ({"agnostic": "perhaps"}, "agnostic"),
        ({"model": "no-such-model"}, "no-such-model"),  # neither a known model nor agnostic
    ],
)
def test_bad_agnostic_requests_are_one_line_422s(tmp_path: Path, body: dict, words: str) -> None:
    app = create_app(service_settings(database_url("sqlite", tmp_path), tmp_path))
    with serve_app(app) as base:
        write = make_key(base, admin_key(tmp_path), ["write"])
        with client(base, write) as c:
            r = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1", **body})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert words in detail and "\n" not in detail and "Traceback" not in detail
            assert c.get("/v1/audits").json()["data"] == []  # nothing stored


@pytest.mark.slow
def test_a_scan_with_an_agnostic_target(tmp_path: Path, bf16_target: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(f"targets:\n  - {{name: closed-api, endpoint: '{bf16_target}', agnostic: true, timeout_s: 60}}\n")
    db = Database(f"sqlite:///{tmp_path / 'scan.db'}")
    db.migrate()
    out = tmp_path / "scan.jsonl"
    options = ScanOptions(out=out, concurrency=2, per_host=2, allow=("127.0.0.0/8",), lease_s=5.0)
    state = run_scan(load_targets(path), path, db, Vault.from_settings(None, tmp_path / "k"), options)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    (result,) = lines[1:]
    assert result["kind"] == "model-agnostic" and result["status"] == "done", result
    assert {n: c["verdict"] for n, c in result["checks"].items()} == EXPECTED
    assert result["queries"] <= 8 and result["budget_queries"] == 8
    assert AgnosticReportPublic.model_validate(result["report"]).queries == result["queries"]
    html = tmp_path / "scan.html"
    write_html(state.results, html, title="agnostic scan")
    assert "precision bf16" in html.read_text() and "engine hspi-target" in html.read_text()


def test_scan_refuses_an_agnostic_target_with_a_model(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n  - {endpoint: 'http://127.0.0.1:9/v1', agnostic: true, model: lm-small}\n")
    with pytest.raises(ConfigError, match=r"entry 1: model does not apply to a model-agnostic target"):
        load_targets(path)


def test_a_restarted_agnostic_audit_ends_interrupted_without_spending_its_budget_again(tmp_path: Path) -> None:
    """Its requests live in its report only, so it cannot resume: a crash after 3 queries must not cost 8 more."""
    from hspi.api import store
    from hspi.api.security import EndpointGuard
    from hspi.api.workers import AuditWorkers
    from hspi.audit.agnostic import AgnosticSettings

    db = Database(f"sqlite:///{tmp_path / 'service.db'}")
    db.migrate()
    with serve_handler(slow_completion) as (url, seen):
        audit, _ = store.create_audit(db, AgnosticSettings(endpoint=url), origin="127.0.0.1:1")
        # a worker took it, sent 3 queries and died: its lease ran out long ago
        assert store.claim(db, audit.id, "127.0.0.1:1", "dead-worker", -100.0, per_host=2) is not None
        assert store.store_progress(db, audit.id, "dead-worker", 3, 3, -100.0) == (True, False)
        workers = AuditWorkers(db, Vault.from_settings(None, tmp_path / "k"), EndpointGuard(("127.0.0.0/8",)))
        workers.start()
        try:
            deadline = time.monotonic() + 30
            while store.get_audit(db, audit.id).status not in store.FINAL:
                assert time.monotonic() < deadline, "the restarted audit never ended"
                time.sleep(0.05)
        finally:
            workers.stop()
        ended = store.get_audit(db, audit.id)
    assert ended.status == "interrupted" and "cannot resume" in (ended.error or "") and ended.attempts == 2
    assert seen.count == 0 and ended.queries == 3
