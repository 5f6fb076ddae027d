"""The audit API's contract, against a real uvicorn on 127.0.0.1 and a real reference target:
audits end to end, keys and scopes, every bad request a 4xx with a sentence, credentials that never
leak, limits (413, 429), the SSRF guard, OpenAPI that declares what the routes answer.  The
end-to-end tests run on SQLite and, when HSPI_TEST_POSTGRES_URL is set, on PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from reproducing import full_prompt, serving_platform
from servers import serve_asgi, serve_handler
from service_support import (
    BACKENDS,
    admin_key,
    client,
    database_url,
    make_key,
    serve_app,
    service_settings,
    wait_final,
    wait_for,
)

from hspi.api.app import create_app
from hspi.api.schemas import AuditReportPublic
from hspi.audit import AuditReport
from hspi.collector.target_server import create_target_app

SECRET = "sk-test-DO-NOT-LEAK-4f9c2a"


@pytest.fixture(scope="module")
def target() -> str:
    """The reference LM on an fp32 platform whose references this machine reproduces, warmed up."""
    with serve_asgi(create_target_app("lm-small", serving_platform("lm-small"))) as url:
        httpx.post(url + "/completions", json={"prompt": full_prompt(), "max_tokens": 1}, timeout=60)
        yield url


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(base URL, admin key, write key, read key, the app) of a fresh service."""
    settings = service_settings(database_url(request.param, tmp_path), tmp_path)
    app = create_app(settings)
    with serve_app(app) as base:
        admin = admin_key(tmp_path)
        yield base, admin, make_key(base, admin, ["write"]), make_key(base, admin, ["read"]), app


def test_an_audit_runs_in_the_background_and_reports_as_the_cli_does(service, target: str) -> None:  # type: ignore[no-untyped-def]
    base, _, write, read, _ = service
    with client(base, write) as c:
        r = c.post(
            "/v1/audits", json={"endpoint": target, "claim": "dtype=fp32", "budget": 128, "seed": 1, "label": "nightly"}
        )
        assert r.status_code == 202, r.text
        audit = r.json()
        assert r.headers["location"] == f"/v1/audits/{audit['id']}"
        assert audit["status"] in ("queued", "running") and audit["progress"]["budget_queries"] == 128
    with client(base, read) as c:
        done = wait_final(c, audit["id"])
        # the claimed dtype is decided by its own bound; the class cannot be bounded within 128 queries
        assert done["status"] == "done" and done["verdict"] == "consistent" and done["stop"] == "bound-out-of-reach"
        report = AuditReportPublic.model_validate(done["report"])  # the API's own report model
        # every field it publishes is one `hspi audit --json` writes: the CLI's model reads it
        assert AuditReport.model_validate(done["report"]).model_dump().keys() >= done["report"].keys()
        assert "/" not in report.dataset + report.classifier  # names, not the server's paths
        assert report.heads["dtype"].guesses[0].label == "fp32" and report.queries == done["progress"]["queries"]
        answers = c.get(f"/v1/audits/{audit['id']}/answers").json()["data"]
        assert [a["probe_id"] for a in answers] == [e.probe_id for e in report.evidence]
        assert [a["values"] for a in answers] == [e.values for e in report.evidence]  # stored exactly
        assert done["progress"]["answers"] == len(answers) and done["progress"]["leading"]["dtype"] == "fp32"
        listed = c.get("/v1/audits", params={"label": "nightly", "verdict": "consistent"}).json()
        assert [a["id"] for a in listed["data"]] == [audit["id"]] and "report" not in listed["data"][0]


def test_the_target_credential_is_sent_but_never_returned_logged_or_stored_in_plaintext(
    service, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    base, _, write, _, app = service
    seen: list[str] = []

    def echo_key(request, reply):  # type: ignore[no-untyped-def]
        seen.append(request.headers.get("authorization", ""))
        reply.send(401, {"error": {"message": f"bad key {request.headers.get('authorization')}"}})

    caplog.set_level(logging.DEBUG)
    with serve_handler(echo_key) as (url, _), client(base, write) as c:
        r = c.post("/v1/audits", json={"endpoint": url, "target_api_key": SECRET, "budget": 8})
        assert r.status_code == 202 and r.json()["has_credential"] is True
        done = wait_final(c, r.json()["id"])
        bad = c.post("/v1/audits", json={"endpoint": url, "target_api_key": SECRET, "budget": 0})
        bad_type = c.post("/v1/audits", json={"endpoint": url, "target_api_key": {"k": SECRET}})
        texts = [
            r.text,
            done and json.dumps(done),
            bad.text,
            bad_type.text,
            c.get("/v1/audits").text,
            c.get(f"/v1/audits/{done['id']}/answers").text,
        ]
    assert seen and all(h == f"Bearer {SECRET}" for h in seen)  # the target got it
    assert done["status"] == "failed" and "[redacted]" in done["error"] and done["has_credential"] is False
    assert bad.status_code == 422 and bad_type.status_code == 422
    assert all(SECRET not in t for t in texts)
    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    db = app.state.services.db
    with db.engine.connect() as connection:  # the credential column is wiped once the audit ends
        rows = connection.exec_driver_sql("SELECT credential, settings, report, error FROM audits").fetchall()
    assert all(row[0] is None for row in rows)
    assert all(SECRET not in str(value) for row in rows for value in row)
    if db.backend == "sqlite":  # and nothing in the files either (WAL included)
        for path in tmp_path.glob("service.db*"):
            assert SECRET.encode() not in path.read_bytes()


def test_a_queued_credential_is_encrypted_at_rest(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    app = create_app(settings, start_workers=False)
    with serve_app(app) as base, client(base, admin_key(tmp_path)) as c:
        audit = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1", "target_api_key": SECRET}).json()
        assert audit["has_credential"] is True
        with app.state.services.db.engine.connect() as connection:
            token = connection.exec_driver_sql("SELECT credential FROM audits").scalar()
        assert SECRET.encode() not in token and app.state.services.vault.decrypt(token) == SECRET
        for path in tmp_path.glob("service.db*"):
            assert SECRET.encode() not in path.read_bytes()


def test_keys_scopes_and_revocation(service) -> None:  # type: ignore[no-untyped-def]
    base, admin, write, read, _ = service
    with client(base, None) as anonymous:
        r = anonymous.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"})
        assert r.status_code == 401 and "missing API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    with client(base, "hspi_0123456789ab_nope") as bogus:
        assert bogus.get("/v1/audits").json() == {"detail": "invalid or revoked API key"}
    with client(base, read) as c:
        r = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"})
        assert r.status_code == 403 and "needs 'write'" in r.json()["detail"]
        assert c.get("/v1/audits").status_code == 200
    with client(base, write) as c:
        assert c.get("/v1/keys").status_code == 403
    with client(base, admin) as c:
        keys = c.get("/v1/keys").json()["data"]
        assert {k["name"] for k in keys} >= {"bootstrap admin", "test"} and all("key" not in k for k in keys)
        read_id = read.split("_")[1]
        assert c.delete(f"/v1/keys/{read_id}").json()["revoked_at"] is not None
        r = c.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
        assert r.status_code == 422 and "scopes.0" in r.json()["detail"]
    with client(base, read) as c:
        assert c.get("/v1/audits").status_code == 401


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"endpoint": "http://127.0.0.1:9/v1", "budget": 0}, 422, "budget must be between 1 and 4096, got 0"),
        ({"endpoint": "http://127.0.0.1:9/v1", "budget": 5000}, 422, "budget must be between 1 and 4096, got 5000"),
        ({"endpoint": "http://127.0.0.1:9/v1", "model": "gpt-5"}, 422, "unknown model 'gpt-5'"),
        ({"endpoint": "http://127.0.0.1:9/v1", "claim": "gpu=h100"}, 422, "bad claim head 'gpu'"),
        ({"endpoint": "http://127.0.0.1:9/v1", "claim": {"gpu": "h100"}}, 422, "claim head 'gpu' is not one of"),
        (
            {"endpoint": "http://127.0.0.1:9/v1", "api": "grpc"},
            422,
            "api: input should be 'completions', 'chat' or 'logits'",
        ),
        (
            {"endpoint": "http://127.0.0.1:9/v1", "timeout_s": 0},
            422,
            "timeout_s: input should be greater than 0, got 0",
        ),
        ({"endpoint": "ftp://127.0.0.1/v1"}, 422, "not an http(s) URL"),
        ({"endpoint": "http://u:p@127.0.0.1:9/v1"}, 422, "must not carry credentials"),
        ({"endpoint": "http://169.254.169.254/latest"}, 422, "metadata address"),
        ({"endpoint": "http://10.1.1.1/v1"}, 422, "private address"),
        ({}, 422, "endpoint is required"),
        ({"endpoint": "http://127.0.0.1:9/v1", "colour": "red"}, 422, "unknown field 'colour'"),
    ],
)
def test_bad_audit_requests_get_a_sentence(tmp_path: Path, body: dict, status: int, words: str) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        r = c.post("/v1/audits", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail


def test_other_bad_requests_get_a_sentence(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        checks = [
            (
                c.post("/v1/audits", content=b"{not json", headers={"content-type": "application/json"}),
                422,
                "not valid JSON",
            ),
            (c.post("/v1/audits"), 422, "request body is missing"),
            (c.get("/v1/audits/nope"), 404, "no audit with id 'nope'"),
            (c.get("/v1/nowhere"), 404, "no such path: GET /v1/nowhere"),
            (c.delete("/v1/platforms"), 405, "DELETE is not allowed on /v1/platforms"),
            (
                c.get("/v1/audits", params={"limit": 0}),
                422,
                "limit: input should be greater than or equal to 1, got '0'",
            ),
            (c.get("/v1/audits", params={"cursor": "garbage"}), 422, "cursor is not one this service returned"),
            (c.get("/v1/audits", params={"status": "sleeping"}), 422, "status: input should be"),
            (c.get("/v1/platforms", params={"model": "gpt-5"}), 422, "unknown model 'gpt-5'"),
            (
                c.post("/v1/classify", json={"tier": "topk20", "answers": []}),
                422,
                "answers: list should have at least 1 item",
            ),
            (
                c.post(
                    "/v1/classify", json={"tier": "topk20", "answers": [{"probe_id": 10**6, "ids": [], "values": []}]}
                ),
                422,
                "probe 1000000 is not in the reference pool",
            ),
            (
                c.post(
                    "/v1/classify", json={"tier": "topk20", "answers": [{"probe_id": 0, "ids": [1], "values": [0.0]}]}
                ),
                422,
                "shows 20 values; got 1 ids",
            ),
            (
                c.post(
                    "/v1/classify",
                    json={"model": "mlp", "tier": "topk5", "answers": [{"probe_id": 0, "ids": [], "values": []}]},
                ),
                422,
                "mlp is not a language model",
            ),
        ]
    for response, status, words in checks:
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["detail"], (words, response.text)


def test_cursor_pagination_filters_cancel_and_idempotency(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        ids = [
            c.post("/v1/audits", json={"endpoint": f"http://127.0.0.1:{9000 + i}/v1", "label": f"l{i % 2}"}).json()[
                "id"
            ]
            for i in range(7)
        ]
        seen, cursor = [], None
        while True:
            page = c.get("/v1/audits", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += [a["id"] for a in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first, each once
        assert len(c.get("/v1/audits", params={"label": "l0"}).json()["data"]) == 4
        assert len(c.get("/v1/audits", params={"owner": "me", "status": "queued"}).json()["data"]) == 7
        r = c.post(f"/v1/audits/{ids[0]}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        r = c.post(f"/v1/audits/{ids[0]}/cancel")
        assert r.status_code == 409 and "already ended (cancelled)" in r.json()["detail"]
        first = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"}, headers={"Idempotency-Key": "run-42"})
        again = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"}, headers={"Idempotency-Key": "run-42"})
        assert first.status_code == 202 and again.status_code == 200 and first.json()["id"] == again.json()["id"]
        other = make_key(base, admin_key(tmp_path), ["write"], "other")
        with client(base, other) as c2:
            r = c2.post(f"/v1/audits/{ids[1]}/cancel")
            assert r.status_code == 403 and "created by another API key" in r.json()["detail"]


def test_request_body_limit_and_rate_limit(tmp_path: Path) -> None:
    settings = service_settings(
        database_url("sqlite", tmp_path), tmp_path, max_body_bytes=2048, rate_burst=5, rate_per_minute=6
    )
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        r = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1", "label": "x" * 5000})
        assert (
            r.status_code == 413
            and r.json()["detail"] == f"request body is {len(r.request.content)} bytes; the limit is 2048 bytes"
        )

        def chunks():  # no Content-Length: the limit counts what streams in
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/audits", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit is 2048 bytes" in r.json()["detail"]
        statuses = [c.get("/v1/audits").status_code for _ in range(6)]
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429  # 5 in the burst, 2 spent above
        r = c.get("/v1/audits")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit exceeded for API key" in r.json()["detail"] and "retry in" in r.json()["detail"]


def test_ssrf_guard_without_an_allowlist(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path, allow_hosts=[])
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        for endpoint, words in (
            ("http://127.0.0.1:8801/v1", "loopback"),
            ("http://localhost:8801/v1", "resolves to"),
            ("http://[::1]:8801/v1", "loopback"),
            ("http://169.254.169.254/", "metadata"),
            ("http://192.168.0.10/v1", "private"),
            ("http://[fe80::1]/v1", "link-local"),
        ):
            r = c.post("/v1/audits", json={"endpoint": endpoint})
            assert r.status_code == 422 and words in r.json()["detail"], (endpoint, r.text)
        assert c.get("/v1/audits").json()["data"] == []


def test_health_platforms_classifiers_and_classify(tmp_path: Path) -> None:
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes
    from hspi.features.tiers import tier_view
    from hspi.shipped import CPU_DATASET

    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings)) as base, client(base, make_key_direct(tmp_path, base)) as c:
        assert httpx.get(base + "/healthz").json() == {"status": "ok", "checks": {}}
        ready = httpx.get(base + "/readyz").json()
        assert ready["status"] == "ok" and ready["checks"] == {
            "database": "ok",
            "schema": "ok",
            "workers": "ok",
            "classifiers": "ok",
        }
        platforms = c.get("/v1/platforms").json()
        assert platforms["model"] == "lm-small" and len(platforms["data"]) > 5
        tiers = {(k["model"], k["tier"]) for k in c.get("/v1/classifiers").json()["data"]}
        assert {("lm-small", "topk20"), ("lm-small", "logits"), ("mlp", "logits")} <= tiers
        # answers a bf16 platform gave, collected "elsewhere": the references of one class
        ds = Dataset(CPU_DATASET)
        cls = next(c_ for c_ in equivalence_classes(ds, "lm-small") if c_.labels["dtype"] == "bf16")
        responses = ds.responses(cls.members[0], "reference", "lm-small")
        view = tier_view(responses.as_float32()[:4], "topk20")
        answers = [
            {"probe_id": int(p), "ids": view.ids[i].tolist(), "values": view.values[i].astype(np.float64).tolist()}
            for i, p in enumerate(responses.probe_ids[:4])
        ]
        result = c.post("/v1/classify", json={"tier": "topk20", "answers": answers, "claim": "dtype=fp32"}).json()
        assert result["status"] == "match" and result["heads"]["full"]["guesses"][0]["label"] == cls.name
        assert result["verdict"] == "inconsistent" and result["answers_used"] == 4


def make_key_direct(tmp_path: Path, base: str) -> str:
    return make_key(base, admin_key(tmp_path), ["read"])


def test_openapi_declares_every_route_and_the_statuses_it_answers(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings, start_workers=False)) as base:
        spec = httpx.get(base + "/openapi.json").json()
        assert httpx.get(base + "/docs").status_code == 200
    operations = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    expected = {
        ("POST", "/v1/audits"): {"202", "200", "401", "403", "413", "422", "429"},
        ("GET", "/v1/audits"): {"200", "401", "422", "429"},
        ("GET", "/v1/audits/{audit_id}"): {"200", "404", "401"},
        ("GET", "/v1/audits/{audit_id}/answers"): {"200", "404"},
        ("GET", "/v1/audits/{audit_id}/posteriors"): {"200", "404", "401", "422"},
        ("POST", "/v1/audits/{audit_id}/cancel"): {"202", "404", "409", "403"},
        ("GET", "/v1/platforms"): {"200", "422"},
        ("GET", "/v1/classifiers"): {"200"},
        ("POST", "/v1/classify"): {"200", "413", "422"},
        ("POST", "/v1/keys"): {"201", "403"},
        ("GET", "/v1/keys"): {"200"},
        ("DELETE", "/v1/keys/{key_id}"): {"200", "404"},
        ("GET", "/v1/scans"): {"200"},
        ("GET", "/v1/scans/{scan_id}"): {"200", "404", "401"},
        ("GET", "/healthz"): {"200"},
        ("GET", "/readyz"): {"200", "503"},
    }
    assert set(expected) <= set(operations)
    assert "422" not in operations[("GET", "/healthz")]["responses"]
    assert "422" not in operations[("GET", "/v1/classifiers")]["responses"]
    assert not any("HTTPValidationError" in json.dumps(op) for op in operations.values())  # errors are ErrorBody
    for key, statuses in expected.items():
        declared = set(operations[key]["responses"])
        assert statuses <= declared, (key, declared)
        for status in declared - {"200", "201", "202"}:  # every error body is {"detail": "..."}
            schema = operations[key]["responses"][status]["content"]["application/json"]["schema"]
            assert schema["$ref"].split("/")[-1] in ("ErrorBody", "Health"), (key, status, schema)
    create = operations[("POST", "/v1/audits")]
    body_schema = spec["components"]["schemas"][
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    ]
    assert body_schema["properties"]["target_api_key"]["anyOf"][0]["writeOnly"] is True
    public = spec["components"]["schemas"]["AuditPublic"]["properties"]
    assert "target_api_key" not in public and "credential" not in public
    assert all(op.get("security") for (m, p), op in operations.items() if p.startswith("/v1/"))


def test_a_slow_target_does_not_block_audits_of_another(tmp_path: Path, target: str) -> None:
    """per_host=1: audits of a stalling endpoint queue behind each other, never in front of the rest."""
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path, per_host=1, workers=4)
    release = threading.Event()
    concurrent, peak = [0], [0]
    lock = threading.Lock()

    def slow(request, reply):  # type: ignore[no-untyped-def]
        with lock:
            concurrent[0] += 1
            peak[0] = max(peak[0], concurrent[0])
        release.wait(20)
        with lock:
            concurrent[0] -= 1
        reply.send(500, {"error": "slow and broken"})

    app = create_app(settings)
    with serve_handler(slow) as (slow_url, _), serve_app(app) as base, client(base, admin_key(tmp_path)) as c:
        slow_ids = [
            c.post("/v1/audits", json={"endpoint": slow_url, "budget": 3, "timeout_s": 30}).json()["id"]
            for _ in range(3)
        ]
        wait_for(lambda: concurrent[0] == 1, 10, "the first slow audit to reach its target")
        fast_ids = [
            c.post("/v1/audits", json={"endpoint": target, "budget": 8, "seed": i}).json()["id"] for i in range(3)
        ]
        started = time.monotonic()
        fast = [wait_final(c, i, timeout_s=30) for i in fast_ids]
        assert all(a["status"] == "done" for a in fast) and time.monotonic() - started < 20
        statuses = [c.get(f"/v1/audits/{i}").json()["status"] for i in slow_ids]
        assert sorted(statuses) == ["queued", "queued", "running"]  # one at a time on the slow host
        release.set()
        slow_done = [wait_final(c, i) for i in slow_ids]
    assert peak[0] == 1 and all(a["status"] == "failed" and "HTTP 500" in a["error"] for a in slow_done)


def test_cancel_a_running_audit_keeps_its_answers(tmp_path: Path, target: str) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    gate = threading.Event()

    def slow_proxy(request, reply):  # type: ignore[no-untyped-def]
        if request.path.endswith("/completions") and len(seen) > 1:
            gate.wait(20)
        seen.append(request)
        upstream = httpx.post(
            target + request.path[len("/v1") :],
            content=request.body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        reply.send(upstream.status_code, upstream.content)

    seen: list = []
    with (
        serve_handler(slow_proxy) as (url, _),
        serve_app(create_app(settings)) as base,
        client(base, admin_key(tmp_path)) as c,
    ):
        audit = c.post("/v1/audits", json={"endpoint": url, "budget": 40, "claim": "dtype=fp32"}).json()
        wait_for(lambda: c.get(f"/v1/audits/{audit['id']}").json()["progress"]["answers"] >= 1, 20, "a first answer")
        r = c.post(f"/v1/audits/{audit['id']}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        answered_at_cancel = c.get(f"/v1/audits/{audit['id']}").json()["progress"]["answers"]
        gate.set()
        done = wait_final(c, audit["id"])
    assert done["status"] == "cancelled" and "cancelled through the API" in done["error"]
    # the cancel takes effect within one answer: the one in flight when it came, and no more
    assert done["progress"]["answers"] <= answered_at_cancel + 1
    assert (
        done["report"]["stop"] == "interrupted" and len(done["report"]["evidence"]) == done["progress"]["answers"] >= 1
    )
    assert done["verdict"] != "consistent"  # an audit cut short confirms nothing
