"""The `hspi` command line: thin commands that parse, call the library and render with Rich.

Every `HspiError` (a user's mistake or a bad file) ends as one line on stderr and a non-zero exit
code; only bugs show a traceback.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hspi.errors import ConfigError, HspiError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hardware and software platform inference.")
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect and merge fingerprint datasets.")
app.add_typer(dataset_app, name="dataset")
# Reports piped to a file or another program keep their long labels on one line.
console = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True)

SHIPPED_DATASET = Path("datasets/cpu-amd-epyc")
SHIPPED_CLASSIFIER = Path("models/cpu-amd-epyc")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


@app.command()
def collect(
    grid: Annotated[str, typer.Option(help="named grid: cpu-default, cpu-smoke")] = "cpu-default",
    models: Annotated[str, typer.Option(help="'all' or comma-separated: mlp,cnn,lm-small")] = "all",
    out: Annotated[Path, typer.Option(help="dataset directory (resumed if it exists)")] = SHIPPED_DATASET,
    pool: Annotated[int, typer.Option(help="reference-pool probes per model")] = 1000,
    fresh: Annotated[int, typer.Option(help="fresh (held-out) probes per model")] = 400,
    replay: Annotated[int, typer.Option(help="pool probes re-run in an independent process")] = 300,
) -> None:
    """Run a grid of platforms, each in fresh subprocesses; resumable."""
    from hspi.collector.collect import collect as run_collect
    from hspi.collector.grid import grid_platforms
    from hspi.collector.models import resolve_models

    grid_platforms(grid), resolve_models(models)  # bad names fail before any progress bar is drawn
    with _progress() as progress:
        task = progress.add_task("collecting", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"collecting {config}")

        manifest = run_collect(grid, models, out, pool=pool, fresh=fresh, replay=replay, on_progress=on_progress)
    console.print(f"{len(manifest.configs)} configurations in {out}")


@app.command()
def train(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    out: Annotated[Path, typer.Option(help="where to write the classifier")] = SHIPPED_CLASSIFIER,
    tiers: Annotated[str, typer.Option(help="comma-separated tiers")] = "logits,topk20,topk5,top1",
) -> None:
    """Fit the reference-match heads (LightGBM text + JSON) on a dataset."""
    from hspi.dataset import Dataset
    from hspi.classifier.training import train as run_train

    written = run_train(Dataset(dataset), out, tiers=_split(tiers), log=lambda s: err.print(s))
    console.print(f"wrote {len(written)} classifiers under {out}")


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    json_path: Annotated[Path, typer.Option("--json", help="where to write the results JSON")] = Path("benchmarks/results/cpu-amd-epyc.json"),
    plots: Annotated[Optional[Path], typer.Option(help="directory for the plots")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated models (default: all)")] = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated tiers (default: all)")] = None,
    open_set: Annotated[bool, typer.Option(help="leave each class out in turn (slower)")] = True,
) -> None:
    """Measure every split x tier x head x method x queries; write JSON (and plots)."""
    from hspi.dataset import Dataset
    from hspi.classifier.evaluation import Evaluation
    from hspi.features.tiers import check_tier

    tier_list = [check_tier(t) for t in _split(tiers)] if tiers else None
    result = Evaluation(Dataset(dataset), models=_split(models) if models else None, tiers=tier_list,
                        open_set=open_set, log=lambda s: err.print(s)).run()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    confusions = result.pop("_confusions", None)
    json_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if plots is not None:
        from hspi.classifier.plots import write_plots

        write_plots(result, plots, confusions)
    _summary(result)
    console.print(f"results: {json_path} ({result['seconds']} s)")


@app.command()
def platforms(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    model: Annotated[Optional[str], typer.Option(help="one model (default: all, jointly)")] = None,
) -> None:
    """Print the equivalence classes: configurations with bit-identical outputs."""
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes, joint_classes

    ds = Dataset(dataset)
    if model is not None and model not in ds.models:
        raise ConfigError(f"model {model!r} is not in {dataset}; it has: {', '.join(ds.models)}")
    classes = equivalence_classes(ds, model) if model else joint_classes(ds)
    table = Table("class", "members", "hardware", "dtype", "engine", "kernel", title=f"{len(classes)} equivalence classes"
                  + (f" for {model}" if model else " (identical on every probe of every model)"))
    for cls in classes:
        table.add_row(cls.name, "\n".join(cls.members), cls.labels["hardware"], cls.labels["dtype"],
                      cls.labels["engine"], cls.labels["kernel"])
    console.print(table)


@dataset_app.command("info")
def dataset_info(directory: Annotated[Path, typer.Argument(help="dataset directory")]) -> None:
    """Summarise a dataset and check every shard against its hash."""
    from hspi.dataset import Dataset

    ds = Dataset(directory)
    ds.validate()
    m = ds.manifest
    size = sum(p.stat().st_size for p in (directory / "shards").glob("*.parquet"))
    console.print(f"[bold]{m.name}[/bold] ({m.format}), grid {m.grid or '-'}, created {m.created or '-'}")
    console.print(f"{len(m.configs)} configurations, models: {', '.join(ds.models)}, shards: {size / 1e6:.1f} MB, all hashes verified")
    for model, sets in m.probe_sets.items():
        console.print(f"  {model}: " + ", ".join(f"{v} ({n})" for v, n in sets.items()))
    sources = sorted({r.source for r in m.configs.values()})
    console.print(f"sources: {', '.join(sources)}")


@dataset_app.command("merge")
def dataset_merge(
    out: Annotated[Path, typer.Argument(help="the merged dataset directory")],
    sources: Annotated[list[Path], typer.Argument(help="datasets to merge (shards from several machines)")],
) -> None:
    """Merge datasets collected on several machines; probe sets must agree."""
    from hspi.dataset_merge import merge

    manifest = merge(out, sources)
    console.print(f"merged {len(sources)} datasets: {len(manifest.configs)} configurations in {out}")


@app.command()
def demo(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    classifier: Annotated[Path, typer.Option(help="classifier directory")] = SHIPPED_CLASSIFIER,
    model: Annotated[str, typer.Option(help="reference model to probe")] = "lm-small",
    tier: Annotated[str, typer.Option(help="access tier the target exposes")] = "logits",
    queries: Annotated[int, typer.Option(help="pool probes to send")] = 4,
    seed: Annotated[Optional[int], typer.Option(help="pick the platform with this seed (default: random)")] = None,
) -> None:
    """The main job: run a random platform of the grid in a fresh process and identify it."""
    from hspi.dataset import Dataset
    from hspi.classifier.artifacts import load_matcher
    from hspi.classifier.identify import identify
    from hspi.collector.local_run import run_in_fresh_process
    from hspi.features.tiers import check_tier
    from hspi.report import render_verdict

    check_tier(tier)
    ds = Dataset(dataset)
    matcher, _ = load_matcher(classifier / model / tier)
    rng = random.Random(seed)
    config_id = rng.choice(ds.complete_configs(model))
    platform = ds.manifest.configs[config_id].platform
    err.print(f"running a hidden platform in a fresh process ({queries} pool probes of {model})...")
    with tempfile.TemporaryDirectory(prefix="hspi-demo-") as tmp:
        responses = run_in_fresh_process(platform, model, ds.manifest.probe_sets[model], queries,
                                         seed=rng.randrange(2**31), workdir=Path(tmp))
    verdict = identify(ds, matcher, responses, tier)
    from hspi.equivalence import equivalence_classes

    cls = next(c for c in equivalence_classes(ds, model) if config_id in c.members)
    render_verdict(verdict, console, truth=cls.labels)
    console.print(f"the hidden platform was [bold]{platform.id}[/bold] (class {cls.name})")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _summary(result: dict) -> None:
    table = Table("model", "split", "tier", "head", "method", "q=1", "q=4", "q=16", title="accuracy")
    rows: dict[tuple, dict[int, float]] = {}
    for r in result["results"]:
        rows.setdefault((r["model"], r["split"], r["tier"], r["head"], r["method"]), {})[r["queries"]] = r["accuracy"]
    for key, acc in rows.items():
        table.add_row(*key, *(f"{acc[q]:.3f}" if q in acc else "-" for q in (1, 4, 16)))
    console.print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except HspiError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one plain line: no wrapping, no markup
        sys.exit(exc.exit_code)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click's usage errors (typer vendors click) carry their own message and exit code
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
