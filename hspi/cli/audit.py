"""`hspi audit`: audit one black-box endpoint against a claim."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hspi.audit.engine import AuditReport
from hspi.cli.app import app, console, progress_bar
from hspi.errors import ConfigError, TargetError
from hspi.terms import MatchStatus, StopReason, Verdict


@app.command()
def audit(
    endpoint: Annotated[str, typer.Option(help="base URL of the endpoint, e.g. http://127.0.0.1:8801/v1")],
    model: Annotated[
        str, typer.Option(help="the model the endpoint claims to serve: built-in or registered (hspi model add)")
    ] = "lm-small",
    claim: Annotated[
        Optional[str], typer.Option(help="what the provider claims, e.g. dtype=fp32,hardware=x86-avx2")
    ] = None,
    budget: Annotated[
        Optional[int], typer.Option(help="most queries to send (retries count; default 64, 8 with --agnostic)")
    ] = None,
    max_tokens: Annotated[
        Optional[int], typer.Option(help="most tokens to be billed (default: what the queries cost)")
    ] = None,
    api: Annotated[
        Optional[str],
        typer.Option(
            help="completions, chat (OpenAI-compatible) or logits (JSON logits at {endpoint}/logits); "
            "default: completions for a language model, logits for a model that takes vectors"
        ),
    ] = None,
    served_model: Annotated[Optional[str], typer.Option(help="the model name the endpoint expects")] = None,
    order: Annotated[str, typer.Option(help="split (most informative probe next) or random")] = "split",
    max_tier: Annotated[
        Optional[str],
        typer.Option(help="richest tier to ask for: logits, topk20, topk5, top1 or text (default: the richest given)"),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="probe-order seed (default: random)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 10.0,
    min_answers: Annotated[
        int,
        typer.Option(
            help="answers before a match may be declared; the extra ones verify "
            "the leader against near twins never collected"
        ),
    ] = 2,
    false_match_rate: Annotated[
        Optional[float],
        typer.Option(
            help="the false-match rate a match is bounded at against a platform never collected that agrees "
            "with the leader where its known near twins part (an e-value; the answers needed follow from it)"
        ),
    ] = 0.01,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the report as JSON here")] = None,
    evidence: Annotated[
        Optional[Path], typer.Option(help="append every answer to this JSONL file as it arrives")
    ] = None,
    dataset: Annotated[Optional[Path], typer.Option(help="reference dataset (default: the shipped one)")] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="classifier directory (default: the shipped one)")] = None,
    agnostic: Annotated[
        bool,
        typer.Option(
            "--agnostic",
            help="no model given: read logit precision, determinism and the serving engine from the "
            "endpoint's answers alone (plain-text prompts; --model, --claim and the reference options are not used)",
        ),
    ] = False,
    agnostic_checks: Annotated[
        bool,
        typer.Option(
            "--agnostic-checks",
            help="with --model: after the verdict, also ask the model-agnostic determinism and engine checks "
            "(up to 6 more queries, inside --budget); logit precision is read from the answers either way",
        ),
    ] = False,
) -> None:
    """Audit a black-box endpoint: which platform served it, and does that fit the claim?

    The API key, if any, is read from the HSPI_TARGET_API_KEY environment variable, never from argv.
    Exit codes: 0 consistent or identified, 10 inconsistent, 11 unknown-platform, 12 inconclusive, 13 wrong-model,
    14 nondeterministic, 130 interrupted; 2 bad input, 3 dataset, 4 classifier, 5 the target failed before any answer.
    """
    import os

    from pydantic import ValidationError

    from hspi.audit import AuditSettings, run_audit, write_report
    from hspi.audit.claims import parse_claim
    from hspi.cli.render import render_audit

    if agnostic:
        agnostic_audit(endpoint, api, served_model, budget, max_tokens, max_tier, timeout, seed, json_path, evidence)
        return
    budget = 64 if budget is None else budget
    try:
        settings = AuditSettings.model_validate(  # the options as typed: pydantic names a bad one
            {
                "endpoint": endpoint,
                "model": model,
                "claim": parse_claim(claim),
                "budget_queries": budget,
                "budget_tokens": max_tokens,
                "api": api,
                "served_model": served_model,
                "order": order,
                "max_tier": max_tier,
                "seed": seed,
                "timeout_s": timeout,
                "min_answers": min_answers,
                "false_match_rate": false_match_rate,
                "agnostic_checks": agnostic_checks,
                "dataset": dataset,
                "classifier": classifier,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])  # named as the option the user typed
        flag = {"budget_queries": "budget", "budget_tokens": "max-tokens", "timeout_s": "timeout"}.get(field, field)
        raise ConfigError(f"--{flag.replace('_', '-')}: {first['msg']}") from None
    with progress_bar(transient=True) as progress:
        task = progress.add_task("auditing", total=budget)
        report = run_audit(
            settings,
            api_key=os.environ.get("HSPI_TARGET_API_KEY"),
            evidence_path=evidence,
            on_query=lambda r, _: progress.update(task, completed=r.index + 1, description=f"auditing ({r.tier})"),
        )
    if json_path is not None:
        write_report(report, json_path)
    render_audit(report, console)
    sys.exit(exit_code(report))


def agnostic_audit(
    endpoint: str,
    api: str | None,
    served_model: str | None,
    budget: int | None,
    max_tokens: int | None,
    max_tier: str | None,
    timeout: float,
    seed: int | None,
    json_path: Path | None,
    evidence: Path | None,
) -> None:
    """`hspi audit --agnostic`: exit 0 once the checks are read (each may say unknown), 5 if nothing answered."""
    import os

    from pydantic import ValidationError

    from hspi.audit.agnostic import AgnosticSettings, run_agnostic_audit
    from hspi.cli.render import render_agnostic
    from hspi.files import write_json_atomic

    try:
        settings = AgnosticSettings.model_validate(
            {
                "endpoint": endpoint,
                "api": api or "completions",
                "served_model": served_model,
                **({"budget_queries": budget} if budget is not None else {}),
                "budget_tokens": max_tokens,
                "max_tier": max_tier,
                "timeout_s": timeout,
                "seed": seed,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        flag = {"budget_queries": "budget", "budget_tokens": "max-tokens", "timeout_s": "timeout"}.get(field, field)
        raise ConfigError(f"--{flag.replace('_', '-')}: {first['msg']}") from None
    try:
        sink = open(evidence, "a", encoding="utf-8") if evidence is not None else None  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"--evidence {evidence}: cannot be written ({exc.strerror})") from None
    try:
        report = run_agnostic_audit(settings, api_key=os.environ.get("HSPI_TARGET_API_KEY"), evidence_sink=sink)
    finally:
        if sink is not None:
            sink.close()
    if json_path is not None:
        write_json_atomic(json_path, report.model_dump(mode="json"))
    render_agnostic(report, console)
    if report.stop == StopReason.INTERRUPTED:
        sys.exit(INTERRUPTED_EXIT)
    if report.stop == StopReason.TARGET_ERROR and report.tier is None:
        sys.exit(TargetError.exit_code)
    sys.exit(0)


# Exit codes for scripts (README, "Exit codes"): 0 the answers match (a claim holds, or a class is
# identified), 10 the claim is contradicted, 11 no known platform matches, 12 inconclusive, 13 the endpoint
# serves another model, 14 its answers to one prompt vary from call to call; errors
# keep their own codes (2 bad input, 3 dataset, 4 classifier, 5 the target failed before answering).
EXIT_CODES = {
    Verdict.CONSISTENT: 0,
    Verdict.IDENTIFIED: 0,
    Verdict.INCONSISTENT: 10,
    Verdict.UNKNOWN_PLATFORM: 11,
    Verdict.INCONCLUSIVE: 12,
    Verdict.WRONG_MODEL: 13,
    Verdict.NONDETERMINISTIC: 14,
}
INTERRUPTED_EXIT = 130


def exit_code(report: AuditReport) -> int:
    if report.stop == StopReason.INTERRUPTED:
        return INTERRUPTED_EXIT
    if report.stop == StopReason.TARGET_ERROR and report.status == MatchStatus.NO_EVIDENCE:
        return TargetError.exit_code
    return EXIT_CODES[report.verdict or Verdict.INCONCLUSIVE]
