"""Render verdicts and class tables for a terminal, nmap-style: ranked guesses or a plain no-match."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from hspi.verdict import Verdict


def render_verdict(verdict: Verdict, console: Console, truth: dict[str, str] | None = None) -> None:
    console.print(f"[bold]Platform detection[/bold] for [cyan]{verdict.model}[/cyan]: tier {verdict.tier}, "
                  f"{verdict.queries} queries")
    if verdict.status == "unknown":
        console.print(f"[yellow]No exact platform match.[/yellow] {verdict.reason}")
    else:
        console.print(f"Match score {verdict.match_score:.3f} (threshold {verdict.threshold:.3f})")
    table = Table("head", "guess", "probability", "2nd guess", *(["truth"] if truth else []))
    for head, guesses in verdict.heads.items():
        second = f"{guesses[1].label} ({guesses[1].probability:.1%})" if len(guesses) > 1 else ""
        row = [head, guesses[0].label, f"{guesses[0].probability:.1%}", second]
        if truth:
            mark = "[green]✓[/green]" if truth.get(head) == guesses[0].label else "[red]✗[/red]"
            row.append(f"{mark} {truth.get(head, '')}")
        table.add_row(*row)
    console.print(table)
