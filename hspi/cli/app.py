"""The `hspi` Typer application, its command groups and the consoles every command renders on."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def collection_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar for a collection over configurations: yields its `on_progress(config, done, total)`."""
    with progress_bar() as progress:
        task = progress.add_task("collecting", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"collecting {config}")

        yield on_progress


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )
