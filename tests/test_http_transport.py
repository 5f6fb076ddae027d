"""The composed HTTP stack of targets: public httpx/httpcore parts only, errors as httpx's, Bearer auth."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest
from servers import serve_handler

from hspi.collector.targets.http_transport import BearerToken, PoolTransport
from hspi.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_no_module_reaches_into_private_httpx_or_httpcore_attributes() -> None:
    private = re.compile(r"\._(transport|mounts|pool|network_backend)\b")
    for folder in ("api", "audit", "collector", "hspi"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not private.search(path.read_text()), path


@pytest.mark.parametrize("token", ["", "sk-1\r\nX-Evil: 1", "sk 1", "sk-é", "sk-\x00"])
def test_a_bearer_token_is_printable_ascii(token: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII") as info:
        BearerToken(token)
    assert token not in str(info.value) or not token


def test_the_bearer_token_is_sent_and_never_shown() -> None:
    auth = BearerToken("sk-secret-123")
    assert "sk-secret" not in repr(auth)
    with serve_handler(lambda req, reply: reply.send(200, {"ok": True})) as (url, seen):
        with httpx.Client(transport=PoolTransport(), auth=auth) as client:
            assert client.get(url + "/models").status_code == 200
    assert seen.requests[0].headers["authorization"] == "Bearer sk-secret-123"


def test_connection_failures_are_httpx_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        with httpx.Client(transport=PoolTransport()) as client, pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")
