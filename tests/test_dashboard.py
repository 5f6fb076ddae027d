"""The dashboard (/dashboard/) and the API it reads: audits with filters, one audit's evidence over
queries, scans.  One service on 127.0.0.1 (SQLite) with real audits of a real reference target and a
real scan, read by the API and by a real headless Chromium (Debian's package, driven by Playwright
through `executable_path`: no browser is downloaded).

HSPI_DASHBOARD_SCREENSHOTS=DIR writes the pages' screenshots there (benchmarks/results/dashboard/
holds the committed ones); without it they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from reproducing import full_prompt, serving_platform
from servers import serve_asgi, serve_handler
from service_support import admin_key, client, database_url, make_key, serve_app, service_settings, wait_final

from hspi.api.app import create_app
from hspi.api.db import Database
from hspi.api.scan import ScanOptions, load_targets, run_scan
from hspi.api.security import Vault
from hspi.api.web_dashboard import PAGE_HEADERS
from hspi.collector.target_server import create_target_app

CHROMIUM = os.environ.get("HSPI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
MARKUP_LABEL = "nightly <b>fp32</b>"  # must show as text, never as markup


def broken(request, reply):  # type: ignore[no-untyped-def]
    reply.send(500, {"error": "down"})


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A service with three finished audits (consistent, inconsistent) and a finished scan of three targets."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    platform = serving_platform("lm-small")
    # the second target shows no logprobs: its audit reads greedy tokens (the text tier), whose evidence
    # grows answer by answer (at the logprob tiers one answer is usually decisive already)
    with (
        serve_asgi(create_target_app("lm-small", platform)) as target,
        serve_asgi(create_target_app("lm-small", platform, top_logprobs=0)) as text_target,
    ):
        httpx.post(target + "/completions", json={"prompt": full_prompt(), "max_tokens": 1}, timeout=60)
        url = database_url("sqlite", tmp_path)
        with serve_app(create_app(service_settings(url, tmp_path))) as base, serve_handler(broken) as (bad, _):
            admin = admin_key(tmp_path)
            write, read = make_key(base, admin, ["write"]), make_key(base, admin, ["read"])
            with client(base, write) as c:
                bodies = [
                    # six answers before it may stop: a longer evidence curve
                    {
                        "endpoint": target,
                        "claim": "dtype=fp32",
                        "budget": 128,
                        "seed": 1,
                        "min_answers": 6,
                        "label": MARKUP_LABEL,
                    },
                    {"endpoint": target, "claim": "dtype=bf16", "budget": 128, "seed": 2, "label": "a false claim"},
                    {"endpoint": text_target, "claim": "dtype=fp32", "budget": 24, "seed": 1, "label": "tokens only"},
                ]
                created = [c.post("/v1/audits", json=b) for b in bodies]
                assert all(r.status_code == 202 for r in created), [r.text for r in created]
                audits = [wait_final(c, r.json()["id"]) for r in created]
            targets = tmp_path / "nightly-scan.yaml"
            targets.write_text(
                "targets:\n"
                f"  - {{name: honest, endpoint: '{target}', claim: 'dtype=fp32', budget: 128, seed: 3}}\n"
                f"  - {{name: liar, endpoint: '{target}', claim: 'dtype=bf16', budget: 128, seed: 4}}\n"
                f"  - {{name: broken, endpoint: '{bad}', claim: 'dtype=fp32', budget: 3, timeout_s: 1}}\n"
            )
            db = Database(url)
            options = ScanOptions(out=tmp_path / "scan.jsonl", concurrency=3, per_host=2, allow=("127.0.0.0/8",))
            state = run_scan(
                load_targets(targets), targets, db, Vault.from_settings(None, tmp_path / "secret.key"), options
            )
            db.dispose()
            yield {
                "base": base,
                "read": read,
                "target": target,
                "text_target": text_target,
                "audits": audits,
                "scan_id": state.scan_id,
            }


def test_the_posteriors_route_replays_the_stored_answers(populated) -> None:  # type: ignore[no-untyped-def]
    honest, liar, tokens = populated["audits"]
    assert honest["verdict"] == "consistent" and liar["verdict"] == "inconsistent"
    assert tokens["verdict"] == "consistent" and tokens["report"]["tier"] == "text"
    with client(populated["base"], populated["read"]) as c:
        for audit in (honest, liar, tokens):
            answers = c.get(f"/v1/audits/{audit['id']}/answers").json()["data"]
            trace = c.get(f"/v1/audits/{audit['id']}/posteriors").json()
            assert trace["note"] == "" and len(trace["data"]) == len(answers) == audit["progress"]["answers"] > 0
            for answer, point in zip(answers, trace["data"], strict=True):
                assert point["index"] == answer["index"] and point["queries_so_far"] == answer["queries_so_far"]
                # the replayed leaders are the ones the audit stored with each answer as it ran
                assert {h: r["label"] for h, r in point["heads"].items()} == answer["leading"]
                assert all(0.0 <= r["probability"] <= 1.0 for r in point["heads"].values())
            last = trace["data"][-1]["heads"]["dtype"]
            assert last["label"] == audit["report"]["heads"]["dtype"]["guesses"][0]["label"] == "fp32"
        assert c.get("/v1/audits/" + "0" * 32 + "/posteriors").status_code == 404
        scan = c.get(f"/v1/scans/{populated['scan_id']}")
        assert scan.status_code == 200 and scan.json()["counts"] == {"done": 2, "failed": 1}
        assert scan.json()["name"] == "nightly-scan" and scan.json()["total"] == 3
        missing = c.get("/v1/scans/not-a-scan")
        assert missing.status_code == 404 and missing.json()["detail"] == "no scan with id 'not-a-scan'"
    with client(populated["base"], None) as anonymous:
        assert anonymous.get(f"/v1/audits/{honest['id']}/posteriors").status_code == 401
        page = anonymous.get("/dashboard/")  # the pages themselves hold no data: no key needed
        assert page.status_code == 200 and '<script src="app.js"></script>' in page.text
        assert all(page.headers[k] == v for k, v in PAGE_HEADERS.items())
        assert (
            anonymous.get("/dashboard/app.js")
            .headers["content-type"]
            .startswith(("text/javascript", "application/javascript"))
        )
        assert anonymous.get("/", follow_redirects=False).headers["location"] == "/dashboard/"
        assert anonymous.get("/dashboard/nothing.js").status_code == 404


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian's package; .ci/run installs it)")
def test_the_dashboard_in_a_headless_browser(populated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    shots = Path(os.environ.get("HSPI_DASHBOARD_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    base, key, (honest, liar, tokens) = populated["base"], populated["read"], populated["audits"]
    expect = sync_api.expect
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1360, "height": 820})
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))

        page.goto(base + "/dashboard/")
        page.wait_for_selector("#error")
        assert "Enter an API key" in page.inner_text("#error")
        page.fill("#key-input", key)
        page.click("#key-use")
        page.wait_for_selector("#audits")
        rows = page.locator("#audits tr[data-audit]")
        assert rows.count() == 6  # three audits and the scan's three
        row = page.locator(f"#audits tr[data-audit='{honest['id']}']")
        assert row.locator(".status").inner_text() == "done" and row.locator(".verdict").inner_text() == "consistent"
        assert row.locator(".endpoint").inner_text() == populated["target"]
        assert MARKUP_LABEL in row.inner_text() and row.locator("b").count() == 0  # text, not markup
        page.screenshot(path=str(shots / "audits.png"), full_page=True)

        page.select_option("#filter-verdict", "inconsistent")
        page.click("#filter-apply")
        # waits by locator: the page's CSP forbids the eval that wait_for_function would need
        expect(page.locator("#audits tr[data-audit]")).to_have_count(2)
        verdicts = page.locator("#audits tr[data-audit] .verdict").all_inner_texts()
        assert verdicts == ["inconsistent", "inconsistent"]  # the liar audit and the scan's liar
        assert page.locator(f"#audits tr[data-audit='{liar['id']}']").count() == 1
        page.select_option("#filter-verdict", "")
        page.select_option("#filter-status", "failed")
        page.click("#filter-apply")
        expect(page.locator("#audits tr[data-audit]")).to_have_count(1)
        assert page.locator("#audits tr[data-audit] .status").all_inner_texts() == ["failed"]

        page.goto(f"{base}/dashboard/#/audits/{tokens['id']}")
        page.wait_for_selector("#posterior-plot path.head")
        answers = tokens["progress"]["answers"]
        assert answers >= 3
        assert page.inner_text("[data-fact='status']") == "done"
        assert page.inner_text("[data-fact='verdict']") == "consistent"
        assert page.inner_text("[data-fact='tier']") == "text"
        assert page.inner_text("#endpoint") == populated["text_target"]
        paths = page.locator("#posterior-plot path.head")
        heads = [paths.nth(i).get_attribute("data-head") for i in range(paths.count())]
        assert "dtype" in heads and "full" in heads
        for i in range(paths.count()):  # one point per answer on every head's line
            d = paths.nth(i).get_attribute("d") or ""
            assert len(re.findall(r"[ML]", d)) == answers and d.startswith("M")
        assert "dtype: fp32" in page.inner_text("#plot-legend")
        assert page.locator("#answers tr[data-answer]").count() == answers
        assert page.locator("#heads tr[data-head='dtype'] td").nth(1).inner_text() == "fp32"
        page.screenshot(path=str(shots / "audit.png"), full_page=True)

        page.goto(base + "/dashboard/#/scans")
        page.wait_for_selector(f"#scans tr[data-scan='{populated['scan_id']}']")
        page.click(f"#scans tr[data-scan='{populated['scan_id']}'] a")
        page.wait_for_selector("#scan-audits")
        assert page.inner_text("#scan-name") == "nightly-scan"
        assert page.inner_text("#scan-counts") == "2 done, 1 failed"
        scan_rows = page.locator("#scan-audits tr[data-audit]")
        assert scan_rows.count() == 3
        by_target = {scan_rows.nth(i).locator("td").first.inner_text(): scan_rows.nth(i) for i in range(3)}
        assert by_target["liar"].locator(".verdict").inner_text() == "inconsistent"
        assert "dtype=fp32" in by_target["liar"].inner_text()  # what it served, against the bf16 claim
        assert by_target["honest"].locator(".verdict").inner_text() == "consistent"
        assert by_target["broken"].locator(".status").inner_text() == "failed"
        page.screenshot(path=str(shots / "scan.png"), full_page=True)

        assert key in page.evaluate("sessionStorage.getItem('hspi.apiKey')")
        page.click("#key-forget")
        page.wait_for_selector("#error")
        assert page.evaluate("sessionStorage.getItem('hspi.apiKey')") is None
        browser.close()
    assert not problems, problems  # no script error, no refused resource (the CSP would say so)
    assert all(u.startswith(base) for u in requested)  # nothing from anywhere else
    assert all(key not in u for u in requested)  # the key never goes in a URL
    assert all((shots / n).stat().st_size < 300_000 for n in ("audits.png", "audit.png", "scan.png"))


def test_an_audit_without_answers_has_no_posteriors_and_says_so(tmp_path: Path) -> None:
    settings = service_settings(database_url("sqlite", tmp_path), tmp_path)
    with serve_app(create_app(settings, start_workers=False)) as base, client(base, admin_key(tmp_path)) as c:
        audit = c.post("/v1/audits", json={"endpoint": "http://127.0.0.1:9/v1"}).json()
        trace = c.get(f"/v1/audits/{audit['id']}/posteriors")
        assert trace.status_code == 200 and trace.json() == {"data": [], "note": "no answers are stored yet"}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian's package; .ci/run installs it)")
def test_a_model_agnostic_audit_in_the_dashboard(tmp_path: Path) -> None:
    """Its page shows its checks and requests (it has no reference answers to fetch), with no script error."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    from hspi.platform import Platform

    with (
        serve_asgi(create_target_app("lm-small", Platform.parse("cpu:native/bf16/torch-eager"))) as target,
        serve_app(create_app(service_settings(database_url("sqlite", tmp_path), tmp_path))) as base,
    ):
        admin = admin_key(tmp_path)
        write, read = make_key(base, admin, ["write"]), make_key(base, admin, ["read"])
        with client(base, write) as c:
            created = c.post("/v1/audits", json={"endpoint": target, "agnostic": True, "timeout_s": 60}).json()
            done = wait_final(c, created["id"], timeout_s=120)
        assert done["status"] == "done", done
        problems: list[str] = []
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(base + "/dashboard/")
            page.wait_for_selector("#key-input")
            page.fill("#key-input", read)
            page.click("#key-use")
            page.wait_for_selector("#audits")
            page.goto(f"{base}/dashboard/#/audits/{created['id']}")
            page.wait_for_selector("#checks")
            cells = page.locator("#checks tr").nth(1).locator("td").all_inner_texts()
            assert cells[:2] == ["precision", "bf16"], cells
            assert page.locator("#requests tr").count() - 1 == len(done["agnostic_report"]["evidence"])
            assert page.inner_text("[data-fact='status']") == "done"
            browser.close()
    assert not problems, problems
