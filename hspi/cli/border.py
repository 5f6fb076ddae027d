"""`hspi border ...`: border prompts for the `text` tier (greedy tokens only).

    hspi border search   find each model's border prompts (closest top-2 ties) in its border stream
    hspi border collect  answer them on every configuration of a dataset, twice (in order, shuffled)
    hspi border report   pairs told apart, stability, greedy-vote accuracy per head and budget

Registered in `hspi/cli.py` as a sub-app; errors end as one line through `hspi.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import TaskID
from rich.table import Table

from hspi.cli.app import console, err, progress_bar
from hspi.collector.border_search import DEFAULT_ARCS, DEFAULT_N, DEFAULT_PREFIXES
from hspi.errors import ConfigError
from hspi.shipped import CPU_CLASSIFIER, CPU_DATASET, RESULTS_DIR

border_app = typer.Typer(no_args_is_help=True, help="Border prompts for the text tier: search, collect, report.")

SHIPPED_DATASET = CPU_DATASET
SHIPPED_CLASSIFIER = CPU_CLASSIFIER
RESULTS_JSON = RESULTS_DIR / "border-prompts.json"


def _models(value: Optional[str], available: list[str]) -> list[str]:
    if value is None or value.strip() == "all":
        return available
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [m for m in chosen if m not in available]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown) or '(none named)'}; this dataset has: {', '.join(available)}"
        )
    return chosen


@border_app.command()
def search(
    dataset: Annotated[
        Path, typer.Option(help="dataset directory; the selection goes to <dataset>/border/")
    ] = SHIPPED_DATASET,
    models: Annotated[Optional[str], typer.Option(help="comma-separated models (default: the dataset's)")] = None,
    n: Annotated[int, typer.Option(help="border prompts per model")] = DEFAULT_N,
    prefixes: Annotated[
        int, typer.Option(help="token models: prefixes scanned (x vocab candidates)")
    ] = DEFAULT_PREFIXES,
    arcs: Annotated[int, typer.Option(help="vector/image models: arcs bisected (at most 1024)")] = DEFAULT_ARCS,
    force: Annotated[bool, typer.Option(help="search again models already in the selection")] = False,
) -> None:
    """Find each model's N closest top-2 ties in its border stream (float64 margins); resumable."""
    from hspi.collector.border_search import search_border
    from hspi.collector.border_store import BorderSelection, SelectionFile, border_dir, load_selection, save_selection
    from hspi.dataset import load_manifest

    manifest = load_manifest(dataset)
    names = _models(models, sorted(manifest.probe_sets))
    directory = border_dir(dataset)
    selection = load_selection(directory) if (directory / "selection.json").exists() else SelectionFile()
    todo = [m for m in names if force or m not in selection.models]
    with progress_bar() as progress:
        for model in todo:
            task = progress.add_task(f"searching {model}", total=None)

            def on_progress(done: int, total: int, task: TaskID = task) -> None:
                progress.update(task, completed=done, total=total)

            found = BorderSelection(**search_border(model, n=n, prefixes=prefixes, arcs=arcs, on_progress=on_progress))
            selection.models[model] = found
            save_selection(directory, selection)  # after each model: an interruption keeps the others
    table = Table(
        "model",
        "border prompts",
        "scanned",
        "median margin",
        "max margin (bf16 steps)",
        "seconds",
        title=f"border selection in {directory}",
    )
    for model in names:
        s = selection.models[model]
        table.add_row(
            model,
            str(len(s.ids)),
            f"{s.scanned:,}",
            f"{sorted(s.margin)[len(s.margin) // 2]:.2e}",
            f"{max(s.relative_margin):.2e}",
            f"{s.seconds:.0f}",
        )
    console.print(table)


@border_app.command()
def collect(
    dataset: Annotated[Path, typer.Option(help="dataset directory holding border/selection.json")] = SHIPPED_DATASET,
    configs: Annotated[Optional[str], typer.Option(help="comma-separated configuration ids (default: all)")] = None,
    restart: Annotated[bool, typer.Option(help="drop answers collected for an earlier selection")] = False,
) -> None:
    """Answer the border prompts on every configuration, in order and again shuffled in another fresh process; resumable."""
    from hspi.collector.border_collect import collect_border
    from hspi.collector.border_store import BorderStore, border_dir

    chosen = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    with progress_bar() as progress:
        task = progress.add_task("collecting border answers", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"border answers {config}")

        index = collect_border(dataset, configs=chosen, restart=restart, on_progress=on_progress)
    store = BorderStore(border_dir(dataset))
    wall = sum(r.wall_seconds for r in index.configs.values())
    console.print(
        f"{len(index.configs)} configurations answered ({wall:.0f} s of worker wall time); "
        f"{store.size_bytes() / 1e6:.2f} MB in {store.directory}"
    )


@border_app.command()
def report(
    dataset: Annotated[Path, typer.Option(help="dataset directory with border answers")] = SHIPPED_DATASET,
    json_path: Annotated[Path, typer.Option("--json", help="where to write the results JSON")] = RESULTS_JSON,
    plot: Annotated[Path, typer.Option(help="where to write the accuracy plot")] = Path(
        RESULTS_DIR / "border-prompts.png"
    ),
    votes: Annotated[
        Path, typer.Option(help="classifier directory: the votes go to <votes>/<model>/text/greedy-vote.json")
    ] = SHIPPED_CLASSIFIER,
    save_plot: Annotated[bool, typer.Option("--save-plot/--no-plot", help="write the plot")] = True,
    save_votes: Annotated[
        bool, typer.Option("--save-votes/--no-votes", help="fit on every answer and save the votes")
    ] = True,
    models: Annotated[
        Optional[str], typer.Option(help="comma-separated models (default: all with border prompts)")
    ] = None,
    seeds: Annotated[int, typer.Option(help="random query orders per audited configuration and fold")] = 10,
    open_set: Annotated[bool, typer.Option(help="leave each class out in turn (slower)")] = True,
) -> None:
    """Pairs told apart, answer stability, greedy-vote accuracy per head at 1/4/16/64 queries; fit and save the votes."""
    import json

    from hspi.classifier.greedy_vote import text_vote_path
    from hspi.classifier.text_tier import border_report
    from hspi.collector.border_store import BorderStore, border_dir
    from hspi.dataset import Dataset

    ds = Dataset(dataset)
    store = BorderStore(border_dir(dataset))
    store.validate()
    names = _models(models, store.models)
    result, fitted = border_report(ds, store, models=names, seeds=seeds, open_set=open_set, log=lambda s: err.print(s))
    result["storage_bytes"] = store.size_bytes()
    # every collection pass, including passes whose answers a later --restart replaced
    result["collection_wall_seconds_all_passes"] = round(sum(r.wall_seconds for r in store.index.configs.values()), 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if save_plot:
        from hspi.classifier.border_plots import write_border_plot

        write_border_plot(result, plot)
    if save_votes:
        for model, vote in fitted.items():
            vote.save(
                text_vote_path(votes, model),
                {
                    "dataset": ds.manifest.name,
                    "model": model,
                    "tier": "text",
                    "probe_sets": result["models"][model]["probe_sets"],
                    "selection_sha256": store.index.selections[model],
                },
            )
    _summary(result)
    console.print(f"results: {json_path} ({result['seconds']} s)")


def _summary(result: dict) -> None:
    table = Table(
        "model",
        "pairs",
        "apart (pool)",
        "apart (pool+border)",
        "eps range",
        "probes",
        "order",
        "head",
        *(f"q={q}" for q in result["queries"]),
        title="text tier: greedy vote on held-out answers",
    )
    for model, r in result["models"].items():
        pairs = r["pairs"]
        eps = f"{r['epsilon']['min']:.3f}-{r['epsilon']['max']:.3f}"
        rows: dict[tuple, dict[int, float]] = {}
        for a in r["accuracy"]:
            if a["head"] in ("full", "dtype", "hardware"):
                rows.setdefault((a["probes"], a["order"], a["head"]), {})[a["queries"]] = a["accuracy"]
        for key, acc in rows.items():
            table.add_row(
                model,
                str(pairs["total"]),
                str(pairs["told_apart_by_pool"]),
                str(pairs["told_apart_by_either"]),
                eps,
                *key,
                *(f"{acc[q]:.3f}" if q in acc else "-" for q in result["queries"]),
            )
    console.print(table)
