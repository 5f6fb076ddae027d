"""collect, train, evaluate, platforms: the reference pipeline from a grid to measured heads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from hspi.cli.app import SHIPPED_CLASSIFIER, SHIPPED_DATASET, app, collection_progress, console, err
from hspi.errors import ConfigError


@app.command()
def collect(
    grid: Annotated[
        str,
        typer.Option(
            help="named grid (cpu-default, cpu-smoke, llama-cpp, llama-server, gpu-default, ...) or a YAML grid file"
        ),
    ] = "cpu-default",
    models: Annotated[
        str, typer.Option(help="'all' or comma-separated: mlp,cnn,lm-small or registered models (hspi model add)")
    ] = "all",
    out: Annotated[Path, typer.Option(help="dataset directory (resumed if it exists)")] = SHIPPED_DATASET,
    pool: Annotated[int, typer.Option(min=1, help="reference-pool probes per model")] = 1000,
    fresh: Annotated[int, typer.Option(min=1, help="fresh (held-out) probes per model")] = 400,
    replay: Annotated[int, typer.Option(min=1, help="pool probes re-run in an independent process")] = 300,
    parallel: Annotated[int, typer.Option(min=1, help="configurations run at once (each in its own processes)")] = 1,
    keep_going: Annotated[bool, typer.Option(help="run the other configurations after one fails")] = False,
) -> None:
    """Run a grid of platforms, each in fresh subprocesses; resumable."""
    from hspi.collector.collect import collect as run_collect
    from hspi.collector.collect import require_cuda
    from hspi.collector.grid import grid_platforms
    from hspi.collector.models import resolve_models

    platforms = grid_platforms(grid)  # bad names fail before any progress bar is drawn
    resolve_models(models)
    if any(p.device == "cuda" for p in platforms):
        require_cuda(grid)
    with collection_progress() as on_progress:
        manifest = run_collect(
            grid,
            models,
            out,
            pool=pool,
            fresh=fresh,
            replay=replay,
            parallel=parallel,
            keep_going=keep_going,
            on_progress=on_progress,
        )
    console.print(f"{len(manifest.configs)} configurations in {out}")


@app.command()
def train(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    out: Annotated[Path, typer.Option(help="where to write the classifier")] = SHIPPED_CLASSIFIER,
    tiers: Annotated[
        Optional[str],
        typer.Option(
            help="comma-separated tiers (default: logits, topk20, topk5, top1, and text for models without border "
            "prompts; with border prompts `hspi border report` fits the text vote)"
        ),
    ] = None,
) -> None:
    """Fit the reference-match heads (LightGBM text + JSON) and the text tier's vote (JSON) on a dataset."""
    from hspi.classifier.training import train as run_train
    from hspi.dataset import Dataset

    written = run_train(Dataset(dataset), out, tiers=_split(tiers) if tiers else None, log=lambda s: err.print(s))
    console.print(f"wrote {len(written)} classifiers under {out}")


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    json_path: Annotated[Path, typer.Option("--json", help="where to write the results JSON")] = Path(
        "benchmarks/results/cpu-amd-epyc.json"
    ),
    plots: Annotated[Optional[Path], typer.Option(help="directory for the plots")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated models (default: all)")] = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated tiers (default: all)")] = None,
    open_set: Annotated[bool, typer.Option(help="leave each class out in turn (slower)")] = True,
    endpoints: Annotated[
        bool,
        typer.Option(
            help="instead: audit live local endpoints (split 'endpoint'); "
            "their rows replace earlier endpoint rows in --json"
        ),
    ] = False,
    seeds: Annotated[int, typer.Option(help="endpoint audits per class, tier and batching mode")] = 4,
) -> None:
    """Measure every split x tier x head x method x queries; write JSON (and plots)."""
    if endpoints:
        _evaluate_endpoints(dataset, json_path, plots, models, seeds)
        return
    from hspi.classifier.evaluation import Evaluation
    from hspi.dataset import Dataset
    from hspi.features.tiers import check_tier

    tier_list = [check_tier(t) for t in _split(tiers)] if tiers else None
    result = Evaluation(
        Dataset(dataset),
        models=_split(models) if models else None,
        tiers=tier_list,
        open_set=open_set,
        log=lambda s: err.print(s),
    ).run()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    confusions = result.pop("_confusions", None)
    if json_path.exists():  # live-endpoint rows come from `--endpoints` runs: keep them
        previous = json.loads(json_path.read_text(encoding="utf-8"))
        result["results"] += [r for r in previous.get("results", []) if r.get("split") == "endpoint"]
        for key in ("endpoint_timing", "endpoint_failures"):
            if key in previous:
                result[key] = previous[key]
    json_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if plots is not None:
        from hspi.classifier.plots import write_plots

        write_plots(result, plots, confusions)
    _summary(result)
    console.print(f"results: {json_path} ({result['seconds']} s)")


def _evaluate_endpoints(dataset: Path, json_path: Path, plots: Path | None, models: str | None, seeds: int) -> None:
    from hspi.audit.endpoint_evaluation import evaluate_endpoints, merge_endpoint_rows, plot_endpoint_accuracy
    from hspi.shipped import shipped_classifier, shipped_dataset

    result: dict = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {"results": []}
    for model in _split(models) or ["lm-small"]:
        target = "llama.cpp" if model == "lm-gpt2" else "hspi-target"  # lm-gpt2's references are llama.cpp runs
        # lm-gpt2 has no border-prompt vote yet: no text tier for llama.cpp
        kwargs: dict[str, Any] = (
            {"batching": (False,), "tiers": ("topk20", "topk5", "top1")} if target == "llama.cpp" else {}
        )
        measured = evaluate_endpoints(
            shipped_dataset(model) if target == "llama.cpp" else dataset,
            shipped_classifier(model),
            model,
            seeds=seeds,
            target=target,
            log=lambda s: err.print(s),
            **kwargs,
        )
        merge_endpoint_rows(result, measured, target=target)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if plots is not None:
        plot_endpoint_accuracy(result, plots / f"{json_path.stem}-endpoint-accuracy.png")
    _summary({"results": [r for r in result["results"] if r["split"] == "endpoint"]})
    console.print(f"endpoint rows written to {json_path}")


@app.command()
def platforms(
    dataset: Annotated[Path, typer.Option(help="dataset directory")] = SHIPPED_DATASET,
    model: Annotated[Optional[str], typer.Option(help="one model (default: all, jointly)")] = None,
    json_path: Annotated[
        Optional[Path], typer.Option("--json", help="also write the classes, their labels and measured CPUs here")
    ] = None,
) -> None:
    """Print the equivalence classes: configurations with bit-identical outputs (and, across CPUs, which are shared)."""
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes, joint_classes, measured_on, measured_vendors

    ds = Dataset(dataset)
    if model is not None and model not in ds.models:
        raise ConfigError(f"model {model!r} is not in {dataset}; it has: {', '.join(ds.models)}")
    classes = equivalence_classes(ds, model) if model else joint_classes(ds)
    vendors = {cls.name: measured_vendors(ds, cls.members) for cls in classes}
    # a dataset of one vendor prints as it always did; across vendors, each class says where it was measured
    across = len({v for vs in vendors.values() for v in vs}) > 1
    columns = ["class", "members", "hardware", "dtype", "engine", "kernel"] + (["measured on"] if across else [])
    title = f"{len(classes)} equivalence classes" + (
        f" for {model}" if model else " (identical on every probe of every model)"
    )
    if across:
        shared = sum(len(v) > 1 for v in vendors.values())
        title += f"; {shared} shared across vendors, {len(classes) - shared} vendor-specific"
    table = Table(*columns, title=title)
    rows = []
    for cls in classes:
        cpus = measured_on(ds, cls.members)
        row = [cls.name, "\n".join(cls.members), *(cls.labels[h] for h in ("hardware", "dtype", "engine", "kernel"))]
        if across:
            row.append("\n".join(cpus) + ("\n(shared)" if len(vendors[cls.name]) > 1 else "\n(vendor-specific)"))
        table.add_row(*row)
        rows.append(
            {
                "class": cls.name,
                "members": list(cls.members),
                "labels": dict(cls.labels),
                "measured_on": cpus,
                "vendors": vendors[cls.name],
                "shared_across_vendors": len(vendors[cls.name]) > 1,
            }
        )
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"dataset": str(dataset), "model": model or "joint", "classes": rows}
        json_path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        console.print(f"classes written to {json_path}")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _summary(result: dict) -> None:
    table = Table("model", "split", "tier", "head", "method", "q=1", "q=4", "q=16", "q=64", title="accuracy")
    rows: dict[tuple, dict[int, float]] = {}
    for r in result["results"]:
        method = r["method"] + (f" ({r['target']}{', batching' if r.get('batching') else ''})" if "target" in r else "")
        rows.setdefault((r["model"], r["split"], r["tier"], r["head"], method), {})[r["queries"]] = r["accuracy"]
    for key, acc in rows.items():
        table.add_row(*key, *(f"{acc[q]:.3f}" if q in acc else "-" for q in (1, 4, 16, 64)))
    console.print(table)
