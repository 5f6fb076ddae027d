"""`hspi scan`: many targets with per-host limits, results to JSONL, the database and an HTML report;
an interrupted scan resumes where it stopped (finished targets skipped, running ones from their answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from reproducing import full_prompt, serving_platform
from servers import serve_asgi, serve_handler

from hspi.api import store
from hspi.api.db import Database
from hspi.api.scan import ScanOptions, ScanTarget, load_targets, run_scan
from hspi.api.scan_report import write_html
from hspi.api.security import Vault
from hspi.audit import AuditReport
from hspi.collector.target_server import create_target_app


@pytest.fixture(scope="module")
def targets() -> tuple[str, str]:
    """Two endpoints of the reference LM on an fp32 platform whose references this machine reproduces."""
    app = create_target_app("lm-small", serving_platform("lm-small"))
    with serve_asgi(app) as a, serve_asgi(app) as b:
        httpx.post(a + "/completions", json={"prompt": full_prompt(), "max_tokens": 1}, timeout=60)
        yield a, b


def targets_file(tmp_path: Path, good: tuple[str, str], bad: str, *, budget: int = 128) -> Path:
    lines = ["targets:"]
    for i in range(4):
        lines.append(
            f"  - {{name: good-{i}, endpoint: '{good[i % 2]}', claim: 'dtype=fp32', budget: {budget}, seed: {i}}}"
        )
    lines.append(f"  - {{name: broken, endpoint: '{bad}', claim: 'dtype=fp32', budget: 3, timeout_s: 1}}")
    lines.append(f"  - {{name: liar, endpoint: '{good[0]}', claim: 'dtype=bf16', budget: {budget}}}")
    path = tmp_path / "targets.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def broken(request, reply):  # type: ignore[no-untyped-def]
    reply.send(500, {"error": "down"})


def test_scan_runs_every_target_and_resumes_after_an_interruption(tmp_path: Path, targets: tuple[str, str]) -> None:
    db = Database(f"sqlite:///{tmp_path / 'scan.db'}")
    db.migrate()
    vault = Vault.from_settings(None, tmp_path / "k")
    out = tmp_path / "scan.jsonl"

    def slow_proxy(request, reply):  # type: ignore[no-untyped-def]
        time.sleep(0.15)
        upstream = httpx.post(
            targets[0] + request.path[len("/v1") :],
            content=request.body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        reply.send(upstream.status_code, upstream.content)

    with serve_handler(broken) as (bad, _), serve_handler(slow_proxy) as (slow, _):
        path = targets_file(tmp_path, (slow, targets[1]), bad)
        entries = load_targets(path)
        options = ScanOptions(out=out, concurrency=3, per_host=1, allow=("127.0.0.0/8",), lease_s=5.0)

        def stop_mid_run() -> bool:  # once a target's line is written and another has answers stored
            audits = store.list_audits(db, store.ListFilter(), limit=50, cursor=None)[0]
            return len(read_jsonl(out)) >= 2 and any(a.status == "running" and a.answers for a in audits)

        with pytest.raises(KeyboardInterrupt):
            run_scan(entries, path, db, vault, options, should_stop=stop_mid_run)
        first = read_jsonl(out)
        assert first[0]["entry_type"] == "scan" and 1 <= len(first) - 1 < len(entries)
        scan_id = first[0]["scan_id"]
        answers_then = {a.scan_target: store.answers(db, a.id) for a in store.scan_audits(db, scan_id)}
        assert any(answers_then.values())
        with out.open("a") as f:
            f.write('{"entry_type": "audit", "target": "torn')  # a crash mid-write
        state = run_scan(entries, path, db, vault, options)
    lines = read_jsonl(out)
    assert lines[0]["scan_id"] == scan_id and state.skipped == len(first) - 1
    results = {r["target"]: r for r in lines[1:]}
    assert len(lines) - 1 == len(entries) == len(results)  # every target once
    assert all(
        results[f"good-{i}"]["status"] == "done" and results[f"good-{i}"]["verdict"] == "consistent" for i in range(4)
    )
    assert results["liar"]["verdict"] == "inconsistent" and results["liar"]["heads"]["dtype"]["guess"] == "fp32"
    # the report's model-agnostic section rides along: precision read from the audit's own answers, no query
    assert results["good-0"]["checks"]["precision"]["verdict"] == "fp32"
    assert results["good-0"]["checks"]["determinism"]["verdict"] == "unknown"  # not asked: agnostic_checks unset
    assert results["broken"]["status"] == "failed" and "HTTP 500" in results["broken"]["reason"]
    audits = store.scan_audits(db, scan_id)
    assert sorted(a.scan_target for a in audits) == sorted(results)  # one audit per target in the database
    for audit in audits:  # answers stored before the interruption are the start of the final evidence
        report = AuditReport.model_validate(audit.report)
        kept = answers_then[audit.scan_target]
        assert [(r.probe_id, r.values) for r in report.evidence[: len(kept)]] == [(r.probe_id, r.values) for r in kept]
    html = tmp_path / "scan.html"
    write_html(state.results, html, title="test scan")
    text = html.read_text()
    assert text.count("<img") == 5 and "good-3" in text and "inconsistent" in text
    assert "precision fp32" in text and "determinism unknown" not in text  # unknown checks are not listed


def test_the_scan_command_end_to_end(tmp_path: Path, targets: tuple[str, str]) -> None:
    with serve_handler(broken) as (bad, _):
        path = targets_file(tmp_path, targets, bad)
        env = {**os.environ, "HSPI_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "COLUMNS": "200"}
        command = [
            sys.executable,
            "-m",
            "hspi",
            "scan",
            str(path),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--report",
            str(tmp_path / "r.html"),
            "--database",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            "--concurrency",
            "4",
            "--allow-host",
            "127.0.0.0/8",
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "good-0" in done.stdout and "inconsistent" in done.stdout and "failed" in done.stdout
    assert (tmp_path / "r.html").read_text().count("<img") == 5
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 7
    assert again.returncode == 0 and len(read_jsonl(tmp_path / "o.jsonl")) == 7  # nothing ran twice
    assert "6 from before" in again.stderr


def test_agnostic_checks_go_with_a_model_and_are_refused_without_one(tmp_path: Path) -> None:
    from hspi.errors import ConfigError

    options = ScanOptions(out=tmp_path / "o.jsonl")
    with_model = ScanTarget(endpoint="http://127.0.0.1:9/v1", agnostic_checks=True)
    assert with_model.audit_settings(options).agnostic_checks is True  # type: ignore[union-attr]
    assert ScanTarget(endpoint="http://127.0.0.1:9/v1").audit_settings(options).agnostic_checks is False  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="agnostic_checks does not apply to a model-agnostic target"):
        ScanTarget(endpoint="http://127.0.0.1:9/v1", agnostic=True, agnostic_checks=True).check_agnostic()


def test_scan_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("- {endpoint: 'http://127.0.0.1:9/v1', api_key_env: HSPI_TEST_NOT_SET}\n")
    env = {k: v for k, v in os.environ.items() if k != "HSPI_TEST_NOT_SET"}
    env["HSPI_SECRET_KEY_FILE"] = str(tmp_path / "secret.key")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hspi",
            "scan",
            str(path),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--database",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: target 'http://127.0.0.1:9/v1 lm-small': environment variable HSPI_TEST_NOT_SET (its api_key_env) is not set"
    ]
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    done = subprocess.run(
        [sys.executable, "-m", "hspi", "scan", str(tmp_path / "missing.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: cannot read the targets file")
