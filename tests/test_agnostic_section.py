"""A reference audit's report carries the model-agnostic section beside the platform verdict: logit
precision read from the answers it already collected (no extra query), determinism and engine asked
after the verdict only with --agnostic-checks (API: agnostic_checks), inside the budget.  Against
`hspi target serve`'s app on loopback (lm-small computing in bf16 on this CPU), through the CLI and
through the service."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import serve_asgi
from service_support import admin_key, client, database_url, make_key, serve_app, service_settings, wait_final

from hspi.api.app import create_app
from hspi.api.schemas import AuditReportPublic
from hspi.audit.agnostic_section import CHECK_QUERIES, NOT_ASKED, SectionTarget, agnostic_section
from hspi.collector.target_server import create_target_app
from hspi.collector.targets.http_client import QueryBudget
from hspi.platform import Platform

EXPECTED = {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"}


class CountingApp:
    """The target's ASGI app, counting the HTTP requests it is sent (what the endpoint would bill)."""

    def __init__(self, app: Any) -> None:
        self.app, self.requests = app, 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def bf16_target() -> Iterator[tuple[str, CountingApp]]:
    counting = CountingApp(create_target_app("lm-small", Platform.parse("cpu:native/bf16/torch-eager")))
    with serve_asgi(counting) as url:
        yield url, counting


def cli_audit(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hspi",
            "audit",
            "--endpoint",
            url,
            "--model",
            "lm-small",
            "--timeout",
            "60",
            "--seed",
            "3",
            "--json",
            str(tmp_path / "report.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out, json.loads((tmp_path / "report.json").read_text())


def verdicts(section: dict) -> dict[str, str]:
    return {name: check["verdict"] for name, check in section["checks"].items()}


def test_precision_is_read_from_the_reference_answers_and_the_rest_is_not_asked_by_default() -> None:
    top = [-1.0, -2.5, -3.0, -3.5, -4.0, -4.5, -5.0, -5.5, -6.0, -6.5, -7.0, -7.5, -8.0, -8.5, -9.0, -9.5]
    answers = [(1, True, "topk20", [*top, -10.0, -10.5, -11.0, -11.5]), (2, False, "topk20", [])]
    budget = QueryBudget(4, 100)
    section = agnostic_section(
        SectionTarget(endpoint="http://127.0.0.1:9/v1", api="completions"), "topk20", answers, budget, ask=False
    )
    assert section.checks["precision"].evidence["answers_used"] == 1  # the incomplete answer is left out
    assert section.checks["determinism"].reason == NOT_ASKED == section.checks["engine"].reason
    assert budget.queries == 0 and not section.asked and section.queries == 0
    # a JSON-logits audit has no OpenAI routes: unknown and why, nothing sent
    logits = agnostic_section(
        SectionTarget(endpoint="http://127.0.0.1:9/v1", api="logits"), "logits", [], budget, ask=True
    )
    assert logits.checks["precision"].verdict == "unknown" and "logits tier" in logits.checks["precision"].reason
    assert "JSON-logits" in logits.checks["engine"].reason and budget.queries == 0


@pytest.mark.slow
def test_cli_report_has_the_platform_verdict_and_the_agnostic_section_within_the_budget(
    bf16_target: tuple[str, CountingApp], tmp_path: Path
) -> None:
    url, counting = bf16_target
    before = counting.requests
    out, report = cli_audit(url, tmp_path, "--agnostic-checks", "--budget", "64")
    sent = counting.requests - before
    assert report["verdict"] is not None and report["heads"] and report["tier"] == "topk20"  # the reference section
    section = report["agnostic"]
    assert verdicts(section) == EXPECTED, section["checks"]
    precision = section["checks"]["precision"]
    assert precision["probability"] >= 0.99 and precision["evidence"]["answers_used"] >= 1
    # precision from the reference answers; the checks' requests are counted in the report's, and no more were sent
    assert section["asked"] and 0 < section["queries"] <= CHECK_QUERIES
    assert [r["step"] for r in section["evidence"]][:2] == ["models", "first"]
    assert report["queries"] == sent == len(report["evidence"]) + section["queries"] <= report["budget_queries"]
    assert "Platform audit" in out.stdout and "Model-agnostic checks" in out.stdout and "hspi-target" in out.stdout


@pytest.mark.slow
def test_cli_a_budget_the_reference_audit_spends_leaves_the_checks_unasked(
    bf16_target: tuple[str, CountingApp], tmp_path: Path
) -> None:
    url, counting = bf16_target
    before = counting.requests
    _, report = cli_audit(url, tmp_path, "--agnostic-checks", "--budget", "2")
    # the reference audit stops on the budget, or at once when the false-match bound is out of its reach
    assert report["queries"] == counting.requests - before == 2 == len(report["evidence"])
    section = report["agnostic"]
    assert section["checks"]["precision"]["verdict"] == "bf16"  # read from the two answers, nothing asked
    assert section["queries"] == 0 and "spent the budget" in section["checks"]["determinism"]["reason"]


@pytest.mark.slow
def test_the_service_stores_and_publishes_both_sections(bf16_target: tuple[str, CountingApp], tmp_path: Path) -> None:
    url, counting = bf16_target
    app = create_app(service_settings(database_url("sqlite", tmp_path), tmp_path))
    with serve_app(app) as base:
        write = make_key(base, admin_key(tmp_path), ["write"])
        body = {"endpoint": url, "model": "lm-small", "agnostic_checks": True, "budget": 64, "timeout_s": 60}
        with client(base, write) as c:
            before = counting.requests
            created = c.post("/v1/audits", json=body)
            assert created.status_code == 202, created.text
            done = wait_final(c, created.json()["id"], timeout_s=240)
            refused = c.post("/v1/audits", json={"endpoint": url, "agnostic": True, "agnostic_checks": True})
    assert done["status"] == "done", done
    report = AuditReportPublic.model_validate(done["report"])
    assert report.verdict is not None and report.heads and report.agnostic is not None
    assert {n: c.verdict for n, c in report.agnostic.checks.items()} == EXPECTED
    assert report.queries == counting.requests - before <= report.budget_queries
    assert report.queries == len(report.evidence) + report.agnostic.queries
    assert refused.status_code == 422 and "agnostic_checks does not apply" in refused.json()["detail"]
