"""The `hspi` Typer application, its command groups and the consoles every command renders on."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hspi.shipped import CPU_CLASSIFIER, CPU_DATASET

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hardware and software platform inference.")
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect and merge fingerprint datasets.")
app.add_typer(dataset_app, name="dataset")
target_app = typer.Typer(no_args_is_help=True, help="Serve reference models as known targets.")
app.add_typer(target_app, name="target")
# Reports piped to a file or another program keep their long labels on one line.
console = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True)

SHIPPED_DATASET = CPU_DATASET
SHIPPED_CLASSIFIER = CPU_CLASSIFIER


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )
