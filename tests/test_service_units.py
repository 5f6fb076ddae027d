"""The audit service's parts on their own: keys and scopes, the credential vault, the SSRF guard,
the rate limiter, error messages, the public report, migrations (SQLite and PostgreSQL), the targets
file of a scan."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from servers import serve_handler
from service_support import BACKENDS, database_url

from hspi.api.app import validation_message
from hspi.api.db import Base, Database
from hspi.api.scan import load_targets
from hspi.api.security import (
    EndpointGuard,
    EndpointRefused,
    RateLimiter,
    Vault,
    expand_scopes,
    hash_key,
    key_id_of,
    key_matches,
    new_api_key,
)
from hspi.api.store import decode_cursor
from hspi.errors import ConfigError, TargetError

# -- keys and scopes --------------------------------------------------------------------------------


def test_scopes_are_ordered_and_checked() -> None:
    assert expand_scopes(["read"]) == {"read"}
    assert expand_scopes(["write"]) == {"read", "write"}
    assert expand_scopes(["admin"]) == {"read", "write", "admin"}
    with pytest.raises(ConfigError, match="unknown scope 'root'"):
        expand_scopes(["root"])


def test_api_keys_are_random_and_only_their_hash_is_kept() -> None:
    key_id, key, stored = new_api_key()
    assert key.startswith(f"hspi_{key_id}_") and len(key) > 50 and key_id_of(key) == key_id
    assert stored == hash_key(key) and key not in stored and len(stored) == 64
    assert key_matches(key, stored) and not key_matches(key + "x", stored)
    assert new_api_key()[1] != key
    for bad in ("", "Bearer", "hspi_", "hspi_XYZ_abc", "sk-123", "hspi_0123456789ab"):
        assert key_id_of(bad) is None


# -- the vault ------------------------------------------------------------------------------------


def test_vault_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    vault = Vault.from_settings(None, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = vault.encrypt("sk-live-123")
    assert b"sk-live-123" not in token and "sk-live" not in repr(vault)
    assert Vault.from_settings(None, path).decrypt(token) == "sk-live-123"


def test_vault_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(Fernet.generate_key())
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Vault.from_settings(None, path)


def test_vault_rotation_and_a_wrong_key(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = Vault.from_settings(old, tmp_path / "unused").encrypt("secret")
    assert Vault.from_settings(f"{new},{old}", tmp_path / "unused").decrypt(token) == "secret"
    with pytest.raises(ConfigError, match="cannot be decrypted") as info:
        Vault.from_settings(new, tmp_path / "unused").decrypt(token)
    assert "secret" not in str(info.value).replace("secret key", "")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        Vault.from_settings("short", tmp_path / "unused")


# -- the SSRF guard -----------------------------------------------------------------------------------


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            import socket

            raise socket.gaierror("unknown")
        return table[host]

    return resolve


PUBLIC = {
    "api.example.com": ["93.184.215.14"],
    "sneaky.example.com": ["93.184.215.14", "127.0.0.1"],
    "inside.example.com": ["10.1.2.3"],
    "localhost": ["127.0.0.1", "::1"],
}


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://127.0.0.1:8801/v1", "loopback"),
        ("http://[::1]:8801/v1", "loopback"),
        ("http://localhost:8801/v1", "resolves to 127.0.0.1, which is a loopback"),
        ("http://sneaky.example.com/v1", "resolves to 127.0.0.1"),
        ("http://inside.example.com/v1", "private"),
        ("http://10.0.0.5/v1", "private"),
        ("http://192.168.1.1/v1", "private"),
        ("http://172.16.0.1/v1", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://169.254.10.10/v1", "link-local"),
        ("http://[fe80::1]/v1", "link-local"),
        ("http://[::ffff:127.0.0.1]/v1", "loopback"),
        ("http://100.64.0.1/v1", "shared"),
        ("http://0.0.0.0/v1", "unspecified"),
        ("http://no-such-host.example.com/v1", "does not resolve"),
        ("ftp://api.example.com/v1", "not an http(s) URL"),
        ("http://user:pw@api.example.com/v1", "must not carry credentials"),
        ("not a url", "not an http(s) URL"),
    ],
)
def test_guard_refuses_what_is_not_public(url: str, words: str) -> None:
    guard = EndpointGuard(resolver=resolver(PUBLIC))
    with pytest.raises(EndpointRefused, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        guard.check(url)
    assert "pw" not in str(info.value)


def test_guard_admits_public_hosts_and_what_the_allowlist_names() -> None:
    assert EndpointGuard(resolver=resolver(PUBLIC)).check("https://api.example.com/v1") == ["93.184.215.14"]
    loopback = EndpointGuard(["127.0.0.0/8", "::1"], resolver=resolver(PUBLIC))
    assert loopback.check("http://localhost:8000/v1") == ["127.0.0.1", "::1"]
    assert loopback.check("http://127.0.0.1:9/v1")
    with pytest.raises(EndpointRefused, match="private"):
        loopback.check("http://10.0.0.5/v1")
    assert EndpointGuard(["inside.example.com"], resolver=resolver(PUBLIC)).check("http://inside.example.com/v1")
    # a broad allowlist still refuses the metadata service, unless it names the address exactly
    with pytest.raises(EndpointRefused, match="metadata"):
        EndpointGuard(["0.0.0.0/0"]).check("http://169.254.169.254/")
    assert EndpointGuard(["169.254.169.254/32"]).check("http://169.254.169.254/")
    with pytest.raises(ConfigError, match="neither a network"):
        EndpointGuard(["http://x/"])


def test_guarded_transport_checks_every_connection_and_defeats_dns_rebinding() -> None:
    """The name resolves to a public address when the audit is created, to loopback when it connects."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    guard = EndpointGuard(resolver=lambda host, port: next(answers))
    guard.check("http://rebind.example.com/v1")  # at creation: public
    with serve_handler(lambda req, reply: reply.send(200, {"ok": True})) as (url, seen):
        port = httpx.URL(url).port
        with httpx.Client(transport=guard.transport()) as http, pytest.raises(TargetError, match="loopback"):
            http.get(f"http://rebind.example.com:{port}/v1")
        assert seen.count == 0  # nothing reached the loopback server
        allowed = EndpointGuard(["127.0.0.0/8"])
        with httpx.Client(transport=allowed.transport()) as http:
            assert http.get(url + "/models").status_code == 200


def test_guarded_transport_never_follows_a_redirect_to_metadata() -> None:
    from hspi.collector.targets.http_client import BudgetedHTTPClient, QueryBudget

    def redirect(req, reply):  # type: ignore[no-untyped-def]
        reply.send(302, {}, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    with serve_handler(redirect) as (url, seen):
        client = BudgetedHTTPClient(
            url, QueryBudget(3, 100), retries=0, transport=EndpointGuard(["127.0.0.0/8"]).transport()
        )
        with pytest.raises(TargetError, match="302"):
            client.post("/completions", {}, billed=1)
        client.close()
    assert seen.count == 1


# -- limits and messages --------------------------------------------------------------------------


def test_rate_limiter_is_a_token_bucket_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0  # another key has its own bucket
    now[0] = 1.0
    assert limiter.take("a") == 0 and limiter.take("a") > 0


def test_validation_messages_are_sentences_and_never_echo_secrets() -> None:
    from pydantic import ValidationError

    from hspi.api.schemas import AuditCreate

    with pytest.raises(ValidationError) as info:
        AuditCreate.model_validate({"endpoint": "http://x/v1", "target_api_key": "sk-" + "A" * 5000, "seed": -1})
    message = validation_message(info.value.errors())
    assert "AAAA" not in message and "sk-" not in message
    assert "seed: input should be greater than or equal to 0, got -1" in message
    with pytest.raises(ValidationError) as info:
        AuditCreate.model_validate({"budget": "many"})
    message = validation_message(info.value.errors())
    assert "endpoint is required" in message and "budget: input should be a valid integer" in message


# -- the public report ------------------------------------------------------------------------------

PUBLIC_REPORT_FIELDS = [  # the API's contract: changing it is a change of the public API, not of the engine
    "endpoint", "model", "api", "tier", "status", "verdict", "reason", "stop", "queries", "tokens",
    "budget_queries", "budget_tokens", "answers_used", "match_score", "threshold", "claim", "heads",
    "matched_class", "caveat", "logit_precision", "agnostic", "evidence", "dataset", "classifier", "seconds", "evidence_bound",
    "batching", "determinism",
]  # fmt: skip


def engine_report(**changes: object):  # type: ignore[no-untyped-def]
    """An engine report with every optional part filled in."""
    from hspi.audit import AuditReport, HeadReport, QueryRecord
    from hspi.audit.agnostic import AgnosticRecord, Check
    from hspi.audit.agnostic_section import AgnosticSection
    from hspi.audit.decision import BoundReading
    from hspi.audit.engine import BatchingReading, LogitPrecision, MatchedClass
    from hspi.audit.identification import Guess

    fields: dict[str, object] = {
        "endpoint": "http://127.0.0.1:9/v1",
        "model": "lm-small",
        "api": "completions",
        "tier": "topk5",
        "status": "match",
        "verdict": "consistent",
        "reason": "a known platform matches the answers",
        "stop": "confident",
        "queries": 2,
        "tokens": 40,
        "budget_queries": 16,
        "budget_tokens": 320,
        "answers_used": 2,
        "match_score": 0.97,
        "threshold": 0.5,
        "claim": {"dtype": "fp32"},
        "heads": {
            "dtype": HeadReport(
                guesses=[Guess(label="fp32", probability=0.99)], claimed="fp32", claim_probability=0.99,
                verdict="consistent", why="fits",
            )
        },
        "matched_class": MatchedClass(name="c0", members=["cpu:avx2/fp32/torch-eager"], labels={"dtype": "fp32"}),
        "caveat": "platforms outside the collection may give the same answers",
        "logit_precision": LogitPrecision(verdict="fp32", posterior={"fp32": 1.0}, answers_used=2, reason="r"),
        "agnostic": AgnosticSection(
            checks={"precision": Check(verdict="fp32", probability=0.99, reason="r", evidence={"answers_used": 2}),
                    "determinism": Check(verdict="deterministic", probability=0.8, reason="r"),
                    "engine": Check(verdict="unknown", probability=0.0, reason="no tell")},
            asked=True, queries=2, tokens=60, stop="budget", reason="the budget is spent", prompts=["a", "b"],
            evidence=[AgnosticRecord(index=0, step="models", method="GET", path="/models", status=200,
                                     queries_so_far=3)],
        ),
        "evidence": [
            QueryRecord(index=i, probe_set="pool", probe_id=7 + i, tier="topk5", complete=True, ids=[1, 2, 3, 4, 5],
                        values=[-0.5, -1.25, -2.0, -3.0, -4.0], queries_so_far=i + 1, leading={"dtype": "fp32"})
            for i in range(2)
        ],
        "dataset": "/srv/hspi/datasets/cpu-amd-epyc",
        "classifier": "/srv/hspi/models/cpu-amd-epyc",
        "seconds": 1.5,
        "evidence_bound": BoundReading(alpha=0.01, log_evalue=5.1, log_threshold=4.6, leader_log_evalue=6.0,
                                       leader=3, answers=2, met=True),
        "batching": BatchingReading(state="observed", answers=2, from_batches=1, sizes=[2, 3], reason="r"),
        "determinism": Check(verdict="nondeterministic", probability=0.875, reason="r",
                             evidence={"answers": 4, "groups": [["answer 0"], ["answer 2"]]}),
    }  # fmt: skip
    return AuditReport.model_validate({**fields, **changes})


def test_the_public_report_is_the_engine_report_with_names_for_paths() -> None:
    from hspi.api.public_views import report_public, stored_report_public
    from hspi.api.schemas import AuditReportPublic

    report = engine_report()
    public = report_public(report).model_dump(mode="json")
    assert list(public) == PUBLIC_REPORT_FIELDS == list(AuditReportPublic.model_fields)
    engine = report.model_dump(mode="json")
    # the server's paths are not published: the directories' names are
    assert public.pop("dataset") == "cpu-amd-epyc" and public.pop("classifier") == "cpu-amd-epyc"
    assert public == {k: v for k, v in engine.items() if k not in ("dataset", "classifier")}
    # a stored report (the engine's JSON) publishes the same; a report stored before verdicts, too
    assert stored_report_public(report.model_dump(mode="json")) == report_public(report)
    assert stored_report_public(None) is None
    old = stored_report_public(engine_report(verdict=None, evidence_bound=None).model_dump(mode="json"))
    assert old is not None and old.verdict is None and old.evidence_bound is None
    # a report stored before the model-agnostic section has none
    stored = report.model_dump(mode="json")
    stored.pop("agnostic")
    before = stored_report_public(stored)
    assert before is not None and before.agnostic is None
    # a report stored before the batching reading has none
    stored = report.model_dump(mode="json")
    stored.pop("batching")
    before = stored_report_public(stored)
    assert before is not None and before.batching is None
    # and one stored before the repeat check, none
    stored = report.model_dump(mode="json")
    stored.pop("determinism")
    for answer in stored["evidence"]:
        answer.pop("repeat")
    before = stored_report_public(stored)
    assert before is not None and before.determinism is None and not any(a.repeat for a in before.evidence)


def test_a_field_the_engine_adds_stays_out_of_the_public_report() -> None:
    from hspi.api.public_views import report_public
    from hspi.audit import AuditReport

    class GrownReport(AuditReport):  # an engine that reports more than the API promises
        internal_cache_key: str = "not for clients"

    grown = GrownReport.model_validate(engine_report().model_dump())
    assert "internal_cache_key" not in report_public(grown).model_dump()
    assert report_public(grown) == report_public(engine_report())


def test_a_cursor_that_was_not_issued_is_refused() -> None:
    with pytest.raises(ConfigError, match="cursor"):
        decode_cursor("not-a-cursor")


# -- persistence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_build_exactly_the_models_and_run_twice(backend: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db = Database(database_url(backend, tmp_path))
    db.migrate()
    db.migrate()  # idempotent: a restart migrates again
    assert db.revision() == "0004"
    with db.engine.connect() as connection:
        assert (
            compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata) == []
        )
    if backend == "sqlite":
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.dispose()


def test_database_errors_are_one_line_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        Database("mysql://u:p@h/db")
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        Database("nonsense")
    db = Database("postgresql+psycopg://hspi:hunter2@127.0.0.1:1/nothing")
    with pytest.raises(ConfigError, match="cannot open the database") as info:
        db.migrate()
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


# -- the targets file of a scan -------------------------------------------------------------------------


def test_targets_from_yaml_and_csv(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text(
        "targets:\n  - endpoint: http://a/v1\n    claim: dtype=fp32\n"
        "  - {name: b, endpoint: 'http://b/v1', claim: {hardware: x86-avx2}, budget: 8, api_key_env: B_KEY}\n"
    )
    a, b = load_targets(yaml_file)
    assert a.key == "http://a/v1 lm-small" and a.claim == {"dtype": "fp32"}
    assert b.key == "b" and b.budget == 8 and b.claim == {"hardware": "x86-avx2"} and b.api_key_env == "B_KEY"
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('name,endpoint,claim,budget\nx,http://x/v1,"dtype=bf16,hardware=x86-amx",4\ny,http://y/v1,,\n')
    x, y = load_targets(csv_file)
    assert x.claim == {"dtype": "bf16", "hardware": "x86-amx"} and x.budget == 4 and y.claim == {} and y.budget is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("- endpoint: http://a/v1\n  api_key: sk-1\n", "entry 1: never put a target's key in the file"),
        ("- endpoint: http://a/v1\n- {endpoint: http://a/v1}\n", "entries 1 and 2 are both"),
        ("- {endpoint: http://a/v1, budget: 0}\n", "entry 1: budget"),
        ("- {endpoint: http://a/v1, claim: gpu=h100}\n", "entry 1: bad claim head 'gpu'"),
        ("- {endpoint: http://a/v1, colour: red}\n", "entry 1: colour"),
        ("- just-a-string\n", "entry 1: a target is a mapping"),
        ("targets: [\n", "not valid YAML at line"),
        ("[]\n", "lists no targets"),
    ],
)
def test_bad_targets_files_name_the_entry(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_targets(path)
