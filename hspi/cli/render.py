"""Render verdicts and class tables for a terminal, nmap-style: ranked guesses or a plain no-match."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from hspi.audit.identification import Identification
from hspi.features.precision import verdict_probability

if TYPE_CHECKING:
    from hspi.audit import AuditReport
    from hspi.audit.agnostic import AgnosticReport, Check


def render_verdict(verdict: Identification, console: Console, truth: dict[str, str] | None = None) -> None:
    console.print(
        f"[bold]Platform detection[/bold] for [cyan]{verdict.model}[/cyan]: tier {verdict.tier}, "
        f"{verdict.queries} queries"
    )
    if verdict.status == "unknown":
        console.print(f"[yellow]No exact platform match.[/yellow] {verdict.reason}")
    else:
        console.print(f"Match score {verdict.match_score:.3f} (threshold {verdict.threshold:.3f})")
    table = Table("head", "guess", "probability", "2nd guess", *(["truth"] if truth else []))
    for head, guesses in verdict.heads.items():
        if not guesses:  # a head the evidence does not decide (or that every collected platform shares)
            table.add_row(head, "unknown", "", "", *([truth.get(head, "")] if truth else []))
            continue
        second = f"{guesses[1].label} ({guesses[1].probability:.1%})" if len(guesses) > 1 else ""
        row = [head, guesses[0].label, f"{guesses[0].probability:.1%}", second]
        if truth:
            mark = "[green]✓[/green]" if truth.get(head) == guesses[0].label else "[red]✗[/red]"
            row.append(f"{mark} {truth.get(head, '')}")
        table.add_row(*row)
    console.print(table)


def render_audit(report: AuditReport, console: Console) -> None:
    """nmap-style: the verdict, the class matched (or a plain no-match), ranked guesses per head where
    the evidence decides them, then what it cost and why it stopped."""
    colour = {
        "consistent": "green",
        "identified": "green",
        "inconsistent": "red",
        "unknown-platform": "yellow",
        "wrong-model": "red",
        "nondeterministic": "yellow",
    }.get(report.verdict or "", "white")
    console.print(
        f"[bold]Platform audit[/bold] of {report.endpoint} ([cyan]{report.model}[/cyan]), tier {report.tier or 'none'}"
    )
    if report.claim:
        claim = ",".join(f"{k}={v}" for k, v in report.claim.items())
        console.print(f"Claim {claim}: [{colour}][bold]{report.verdict}[/bold][/{colour}]")
    else:
        console.print(f"Verdict: [{colour}][bold]{report.verdict}[/bold][/{colour}]")
    if report.status == "unknown":
        console.print(f"[yellow]No exact platform match.[/yellow] {report.reason}")
    elif report.status == "unbounded":
        console.print(f"[yellow]A collected platform fits, not yet bounded.[/yellow] {report.reason}")
    elif report.status == "no-evidence":
        console.print(f"[yellow]No evidence.[/yellow] {report.reason}")
    else:
        console.print(f"Match score {report.match_score:.3f} (threshold {report.threshold:.3f})")
    if report.matched_class is not None:
        members = ", ".join(report.matched_class.members)
        console.print(
            f"Identical to collected class [bold]{report.matched_class.name}[/bold] (its members: {members})."
        )
        console.print(f"[dim]{report.caveat}.[/dim]")
    bound = report.evidence_bound
    if bound is not None:
        e = "0" if bound.log_evalue is None else f"{math.exp(min(bound.log_evalue, 700.0)):.3g}"
        console.print(
            f"Unseen-platform bound: e-value {e} vs 1/α = {1 / bound.alpha:.3g} after {bound.answers} answers "
            f"({'met' if bound.met else 'not met'})"
        )
        if not bound.met:
            decided = [f"{h}={r.value}" for h, r in bound.heads.items() if r.met]
            if decided:
                console.print(f"Decided by their own bound (another value excluded at α): {', '.join(decided)}")
    if report.batching is not None:
        console.print(f"Batching: {report.batching.state} ({report.batching.reason})")
    if report.determinism is not None:
        console.print(f"One prompt asked again: {report.determinism.verdict} ({report.determinism.reason})")
    if report.heads:
        table = Table("head", "reading", "probability", "2nd guess", "claim")
        for head, h in report.heads.items():
            g = h.guesses
            if h.decided and g:
                reading, probability = g[0].label, f"{g[0].probability:.1%}"
            elif g:  # undecided but ranked (a leader not yet bounded, or one below the consistency level)
                reading, probability = f"{g[0].label} (undecided)", f"{g[0].probability:.1%}"
            else:
                reading, probability = "unknown" if "not measured" not in h.why else "not measured here", ""
            second = f"{g[1].label} ({g[1].probability:.1%})" if len(g) > 1 else ""
            claim_cell = f"{h.claimed}: {h.verdict}" if h.claimed else ""
            table.add_row(head, reading, probability, second, claim_cell)
        console.print(table)
    for head, h in report.heads.items():
        if h.claimed or not h.decided:
            console.print(f"  {head}: {h.why}")
    if report.logit_precision is not None and report.agnostic is None:  # a report stored before the section
        p = report.logit_precision
        share = verdict_probability(p.verdict, p.posterior) if p.verdict != "unknown" else 0.0
        console.print(
            f"Logit precision (model-agnostic, from the logprobs alone): {p.verdict}"
            + (f" ({share:.1%}, {p.answers_used} answers)" if p.posterior else "")
            + (f"; {p.reason}" if p.verdict == "unknown" and p.reason else "")
        )
    if report.agnostic is not None:
        section = report.agnostic
        console.print(
            "[bold]Model-agnostic checks[/bold] (the endpoint's own answers, no reference)"
            + (f": {section.queries} more queries ({section.stop})" if section.asked and section.queries else "")
        )
        _render_checks(section.checks, console)
    console.print(
        f"{report.queries} queries ({report.answers_used} answers scored), {report.tokens} tokens, "
        f"{report.seconds:.1f} s; stopped: {report.stop}"
        + (f" ({report.reason})" if report.stop in ("target-error", "interrupted") else "")
    )


def render_agnostic(report: AgnosticReport, console: Console) -> None:
    """The model-agnostic checks, nmap-style: a reading and its probability, or unknown and why."""
    console.print(
        f"[bold]Model-agnostic audit[/bold] of {report.endpoint} ({report.api}"
        + (f", model {report.served_model}" if report.served_model else "")
        + f"), tier {report.tier or 'none'}"
    )
    _render_checks(report.checks, console)
    console.print(
        f"{report.queries} queries, {report.tokens} tokens (budget {report.budget_queries} / {report.budget_tokens}), "
        f"{report.seconds:.1f} s; stopped: {report.stop} ({report.reason})"
    )


def _render_checks(checks: dict[str, Check], console: Console) -> None:
    table = Table("check", "reading", "probability", "why")
    for name, check in checks.items():
        colour = "yellow" if check.verdict == "unknown" else "green"
        probability = f"{check.probability:.1%}" if check.verdict != "unknown" else ""
        table.add_row(name, f"[{colour}]{check.verdict}[/{colour}]", probability, check.reason)
    console.print(table)
    fired = checks["engine"].evidence.get("fired") if "engine" in checks else None
    if fired:
        console.print("  engine tells: " + "; ".join(fired))
