"""Input hygiene at the API's boundary and Idempotency-Key reuse, in process (TestClient, no sockets).

Every hostile string a client can send answers a one-sentence 4xx, never a 5xx, and an audit that
cannot be answered is never stored (a stored one would break GET /v1/audits for everyone).  The
property test drives every route with generated hostile requests on SQLite and, when
HSPI_TEST_POSTGRES_URL is set, on PostgreSQL.  Endpoint hosts resolve through a stub: nothing here
looks a name up or connects anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hostile_requests import HostileRequest, hostile_request, json_body, sweep, well_formed_error
from hypothesis import HealthCheck, given, settings
from service_support import BACKENDS, admin_key, database_url, service_settings

from hspi.api.app import create_app

PUBLIC_ADDRESS = "93.184.215.14"


@contextlib.contextmanager
def api(backend: str, tmp_path: Path, **overrides) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A service without workers whose guard resolves every name to one public address (no DNS)."""
    options = {"rate_per_minute": 1e9, "rate_burst": 10**9, "max_active_per_key": 10**6, **overrides}
    app = create_app(service_settings(database_url(backend, tmp_path), tmp_path, **options), start_workers=False)
    app.state.services.guard.resolve = lambda host, port: [PUBLIC_ADDRESS]
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {admin_key(tmp_path)}"
        yield client


def send(client: TestClient, request: HostileRequest):  # type: ignore[no-untyped-def]
    headers = {"content-type": b"application/json", **request.headers} if request.body is not None else request.headers
    return client.request(request.method, request.path, headers=headers, content=request.body)


def assert_every_audit_reads_back(client: TestClient) -> None:
    listing = client.get("/v1/audits", params={"limit": 200})
    assert listing.status_code == 200, listing.text
    for audit in listing.json()["data"]:
        r = client.get(f"/v1/audits/{audit['id']}")
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_hostile_string_in_every_field_gets_a_4xx_sentence(backend: str, tmp_path: Path) -> None:
    with api(backend, tmp_path) as client:
        problems = []
        for request in sweep():
            r = send(client, request)
            if problem := well_formed_error(r.status_code, r.content):
                problems.append((request.route, request.path[:100], problem))
        assert problems == []
        assert_every_audit_reads_back(client)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_requests_on_every_route_never_get_a_server_error(backend: str, tmp_path: Path) -> None:
    with api(backend, tmp_path) as client:

        @settings(
            max_examples=150 if backend == "sqlite" else 100,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(hostile_request())
        def check(request: HostileRequest) -> None:
            r = send(client, request)
            problem = well_formed_error(r.status_code, r.content)
            assert problem is None, (request.route, request.path[:200], problem)

        check()
        assert_every_audit_reads_back(client)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("claim", {"dtype": "\ud800"}, "claim.dtype: contains a lone UTF-16 surrogate"),
        ("claim", {"dtype": "fp32\x00"}, "contains a NUL character"),
        ("claim", "dtype=\ud800", "claim: contains a lone UTF-16 surrogate"),
        ("label", "nightly\ud800", "label: contains a lone UTF-16 surrogate"),
        ("label", "a\x00b", "label: contains a NUL character"),
        ("label", "a\x1bb", "label: contains the control character U+001B"),
        ("model", "lm-small\x00", "model: contains a NUL character"),
        ("served_model", "m\ud800", "served_model: contains a lone UTF-16 surrogate"),
        ("endpoint", "http://127.0.0.1:9/v1\x00", "endpoint: contains a NUL character"),
        ("endpoint", "http://127.0.0.1:9/v1" + "a" * 3000, "endpoint: string should have at most 2048 characters"),
        ("target_api_key", "sk-1\r\nX-Evil: 1", "target_api_key: must be printable ASCII"),
        ("target_api_key", "sk-é", "target_api_key: must be printable ASCII"),
        ("target_api_key", "sk-\ud800", "target_api_key: contains a lone UTF-16 surrogate"),
    ],
)
def test_bad_text_in_an_audit_is_a_422_and_nothing_is_stored(
    tmp_path: Path, field: str, value: object, words: str
) -> None:
    with api("sqlite", tmp_path) as client:
        body = json_body({"endpoint": "http://127.0.0.1:9/v1", field: value})
        r = client.post("/v1/audits", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert words in detail and "\n" not in detail, detail
        assert "sk-" not in detail and "X-Evil" not in detail
        listing = client.get("/v1/audits")
        assert listing.status_code == 200 and listing.json()["data"] == []


def test_an_audit_whose_answer_cannot_be_rendered_is_not_stored(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hspi.api.routes import audits

    def broken(audit):  # type: ignore[no-untyped-def]
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    with api("sqlite", tmp_path) as client:
        monkeypatch.setattr(audits, "public", broken)
        r = client.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1", "label": "x"})
        assert r.status_code == 500 and r.json()["detail"].startswith("internal error (incident ")
        monkeypatch.undo()
        listing = client.get("/v1/audits")
        assert listing.status_code == 200 and listing.json()["data"] == []


def test_a_bug_answers_one_sentence_without_a_traceback(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hspi.api import store

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("/srv/secret/path went wrong")

    with api("sqlite", tmp_path) as client:
        monkeypatch.setattr(store, "list_audits", broken)
        r = client.get("/v1/audits")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert detail.startswith("internal error (incident ") and detail.endswith("the service logged it")
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text


def test_a_labelled_audit_with_line_breaks_and_emoji_is_fine(tmp_path: Path) -> None:
    with api("sqlite", tmp_path) as client:
        r = client.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1", "label": "nightly\trun\n😀 é"})
        assert r.status_code == 202, r.text
        assert client.get(f"/v1/audits/{r.json()['id']}").json()["label"] == "nightly\trun\n😀 é"


@pytest.mark.parametrize(
    "params, words",
    [
        ({"created_after": "0001-01-01T00:00:00+23:59"}, "created_after is out of range"),
        ({"created_before": "9999-12-31T23:59:59-23:59"}, "created_before is out of range"),
        ({"model": "lm\x00"}, "query parameter 'model' contains a NUL character"),
        ({"label": "x" * 3000}, "query parameter 'label' is 3000 characters long"),
        ({"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzIzOjU5IiwgIjAwIl0"}, "cursor is not one this service returned"),
        ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgIjAwIl0"}, "cursor is not one this service returned"),
    ],
)
def test_bad_query_parameters_are_a_422(tmp_path: Path, params: dict, words: str) -> None:
    with api("sqlite", tmp_path) as client:
        r = client.get("/v1/audits", params=params)
    assert r.status_code == 422 and words in r.json()["detail"], r.text


def test_extreme_but_representable_times_are_fine(tmp_path: Path) -> None:
    with api("sqlite", tmp_path) as client:
        for params in ({"created_after": "0001-01-01T00:00:00-23:59"}, {"created_before": "9999-12-31T00:00:00+23:59"}):
            assert client.get("/v1/audits", params=params).status_code == 200


def test_ids_in_paths_that_are_not_ids_are_404_without_a_query(tmp_path: Path) -> None:
    with api("sqlite", tmp_path) as client:
        r = client.get("/v1/audits/" + "a" * 500)
        assert r.status_code == 404 and r.json()["detail"].endswith("...")
        r = client.get("/v1/audits/%00")
        assert r.status_code == 422 and "NUL" in r.json()["detail"]
        r = client.get("/v1/audits/" + "0" * 32 + "/answers", params={"after": 2**40})
        assert r.status_code == 422 and "after" in r.json()["detail"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_idempotency_key_reuse(backend: str, tmp_path: Path) -> None:
    """The IETF Idempotency-Key draft: same key and body -> the first audit; another body -> 422; empty -> 400."""
    body = {"endpoint": "http://127.0.0.1:9/v1", "label": "a", "target_api_key": "sk-one"}
    with api(backend, tmp_path) as client:
        first = client.post("/v1/audits", json=body, headers={"Idempotency-Key": "run-1"})
        assert first.status_code == 202, first.text
        again = client.post("/v1/audits", json=dict(reversed(body.items())), headers={"Idempotency-Key": "run-1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        for changed in ({**body, "label": "b"}, {**body, "target_api_key": "sk-two"}, {**body, "budget": 8}):
            r = client.post("/v1/audits", json=changed, headers={"Idempotency-Key": "run-1"})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert "Idempotency-Key 'run-1' was used for audit" in detail and "different request body" in detail
            assert "sk-" not in detail
        r = client.post("/v1/audits", json=body, headers={"Idempotency-Key": ""})
        assert r.status_code == 400 and "Idempotency-Key is empty" in r.json()["detail"], r.text
        r = client.post("/v1/audits", json=body, headers={"Idempotency-Key": "k\x01"})
        assert r.status_code == 422 and "printable ASCII" in r.json()["detail"], r.text
        assert len(client.get("/v1/audits").json()["data"]) == 1
