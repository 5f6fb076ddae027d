"""`hspi serve` and `hspi scan`: the audit service and the batch scanner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from hspi.cli.app import app, console, err, progress_bar
from hspi.errors import ConfigError

if TYPE_CHECKING:
    from hspi.api.settings import ServiceSettings


@app.command()
def serve(
    database: Annotated[
        Optional[str],
        typer.Option(
            help="sqlite:///hspi.db or postgresql+psycopg://user@host/db "
            "(default: HSPI_DATABASE_URL, else sqlite:///hspi.db)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[Optional[int], typer.Option(help="audits running at once (default 8)")] = None,
    per_host: Annotated[
        Optional[int], typer.Option(help="audits running at once per target address:port (default 2)")
    ] = None,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(help="network (CIDR) or host name the SSRF guard admits although not public; repeatable"),
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="also serve a demo target on loopback and print a curl line that audits it")
    ] = False,
) -> None:
    """The audit REST API (/v1, OpenAPI at /docs) with background workers; Ctrl-C stops it.

    Other settings come from HSPI_* environment variables (HSPI_SECRET_KEY, HSPI_RATE_PER_MINUTE, ...).
    """
    from hspi.api.server import serve as run_server

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    settings = _settings({"database_url": database, "workers": workers, "per_host": per_host})
    if allow_host:
        settings = settings.model_copy(update={"allow_hosts": [*settings.allow_hosts, *allow_host]})
    run_server(settings, host=host, port=port, demo=demo)


@app.command()
def scan(
    targets: Annotated[
        Path,
        typer.Argument(
            help="YAML or CSV list of targets: endpoint, model (or agnostic: true), claim, budget, name, api_key_env, ..."
        ),
    ],
    out: Annotated[Path, typer.Option(help="JSONL results, one line per target (resumed if it exists)")] = Path(
        "scan.jsonl"
    ),
    report: Annotated[Optional[Path], typer.Option(help="write an HTML report with a plot per head here")] = None,
    concurrency: Annotated[int, typer.Option(help="audits running at once")] = 16,
    per_host: Annotated[int, typer.Option(help="audits running at once per target address:port")] = 4,
    budget: Annotated[int, typer.Option(help="queries per target unless its entry says otherwise")] = 64,
    database: Annotated[
        Optional[str],
        typer.Option(help="where audits and answers are stored (default: HSPI_DATABASE_URL, else sqlite:///hspi.db)"),
    ] = None,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(
            help="only these networks/host names may be scanned (default: any but cloud metadata); repeatable"
        ),
    ] = None,
) -> None:
    """Audit many endpoints at once; interrupted, the same command resumes where it stopped."""

    from hspi.api.db import Database
    from hspi.api.scan import ScanOptions, load_targets, run_scan, target_secret
    from hspi.api.scan_report import finding, write_html
    from hspi.api.security import Vault

    if concurrency < 1 or per_host < 1 or budget < 1:
        raise ConfigError("--concurrency, --per-host and --budget must be at least 1")
    entries = load_targets(targets)
    for entry in entries:
        target_secret(entry)  # a missing key fails before any progress bar is drawn
    settings = _settings({"database_url": database})  # HSPI_* variables, as `hspi serve` reads them
    db = Database(settings.database_url)
    db.migrate()
    vault = Vault.from_settings(
        settings.secret_key.get_secret_value() if settings.secret_key else None, settings.secret_key_file
    )
    options = ScanOptions(
        out=out,
        concurrency=concurrency,
        per_host=per_host,
        budget=budget,
    )
    if allow_host:
        options.allow = tuple(allow_host)
    with progress_bar() as progress:
        audits = progress.add_task("audits", total=len(entries))
        queries = progress.add_task("queries", total=None)

        def on_progress(state) -> None:  # type: ignore[no-untyped-def]
            progress.update(
                audits,
                completed=state.finished,
                description=f"audits ({state.skipped} from before)" if state.skipped else "audits",
            )
            progress.update(queries, completed=state.queries, total=state.budget or None)

        try:
            state = run_scan(entries, targets, db, vault, options, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            err.print(f"interrupted: the answers so far are stored; run the same command again to resume ({out})")
            sys.exit(130)
    table = Table(
        "target", "status", "verdict", "platform (full) / checks", "queries", "stopped", title=f"scan of {targets}"
    )
    for r in state.results:
        table.add_row(
            r["target"],
            r["status"],
            r["verdict"] or "-",
            finding(r),
            f"{r['queries']}/{r['budget_queries']}",
            r["stop"] or "-",
        )
    console.print(table)
    if report is not None:
        write_html(state.results, report, title=f"hspi scan of {targets.name}")
        console.print(f"report: {report}")
    console.print(f"results: {out} (scan {state.scan_id}, database {db.safe_url})")


def _settings(given: dict[str, object]) -> ServiceSettings:
    """The service's settings: HSPI_* variables, overridden by the options given on the command line."""
    from pydantic import ValidationError

    from hspi.api.settings import ServiceSettings

    try:
        return ServiceSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        flag = {"database_url": "database"}.get(field, field).replace("_", "-")
        raise ConfigError(f"--{flag} (or HSPI_{field.upper()}): {first['msg'].lower()}") from None
