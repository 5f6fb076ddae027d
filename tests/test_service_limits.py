"""Per-key and per-host limits of the audit service (in process, no sockets, no DNS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_support import BACKENDS
from test_service_inputs import api

from hspi.api.db import Audit
from hspi.api.security import EndpointGuard


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
