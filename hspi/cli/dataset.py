"""`hspi dataset ...`: inspect, verify, merge and extend fingerprint datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hspi.cli.app import SHIPPED_DATASET, console, dataset_app, progress_bar


@dataset_app.command("info")
def dataset_info(directory: Annotated[Path, typer.Argument(help="dataset directory")]) -> None:
    """Summarise a dataset and check every shard against its hash."""
    from hspi.dataset import Dataset

    ds = Dataset(directory)
    ds.validate()
    m = ds.manifest
    size = sum(p.stat().st_size for p in (directory / "shards").glob("*.parquet"))
    console.print(f"[bold]{m.name}[/bold] ({m.format}), grid {m.grid or '-'}, created {m.created or '-'}")
    console.print(
        f"{len(m.configs)} configurations, models: {', '.join(ds.models)}, shards: {size / 1e6:.1f} MB, all hashes verified"
    )
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


@dataset_app.command("replay-splitting")
def dataset_replay_splitting(
    directory: Annotated[Path, typer.Argument(help="dataset directory")] = SHIPPED_DATASET,
    rare_share: Annotated[
        float, typer.Option(help="classes differing on at most this share of the pool are near twins")
    ] = 0.05,
) -> None:
    """Re-run the pool probes that split near-twin classes, one fresh process per configuration; resumable."""
    from hspi.collector.splitting_replay import collect_splitting_replay, splitting_selection
    from hspi.dataset import SPLITTING_RUN, Dataset

    splitting_selection(Dataset(directory), rare_share)  # a dataset with nothing to replay fails before any bar
    with progress_bar() as progress:
        task = progress.add_task("replaying splitting probes", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"{SPLITTING_RUN} {config}")

        ids = collect_splitting_replay(directory, rare_share=rare_share, on_progress=on_progress)
    console.print(
        f"{SPLITTING_RUN}: "
        + ", ".join(f"{m} {len(v)} probes" for m, v in ids.items())
        + f" on every configuration of {directory}"
    )


@dataset_app.command("collect-batched")
def dataset_collect_batched(
    directory: Annotated[Path, typer.Argument(help="dataset directory")] = SHIPPED_DATASET,
    model: Annotated[str, typer.Option(help="the model whose answers under batching to collect")] = "lm-small",
    probes: Annotated[int, typer.Option(min=1, help="pool probes answered in batches")] = 200,
    max_batch: Annotated[int, typer.Option(min=1, max=64, help="batch sizes 1..max-batch (torch, ONNX Runtime)")] = 8,
) -> None:
    """Answer pool probes in batches (references under batching), one fresh process per configuration;
    resumable.  torch and ONNX Runtime configurations: batches of every size up to --max-batch, as a dynamic
    batcher forms them; llama.cpp platforms with slots: the batches llama-server forms beside its other slots'
    requests (collector.llama_cpp_compositions)."""
    from hspi.collector.batched_collect import check_batched_request, collect_batched
    from hspi.dataset import BATCHED_RUN, Dataset

    sizes = tuple(range(1, max_batch + 1))
    check_batched_request(Dataset(directory), model, sizes)  # bad input fails before any bar
    with progress_bar() as progress:
        task = progress.add_task("answering in batches", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"{BATCHED_RUN} {config}")

        configs = collect_batched(directory, model, probes=probes, sizes=sizes, on_progress=on_progress)
    ds = Dataset(directory)
    slots = sum(1 for c in configs if ds.manifest.configs[c].platform.slots)
    how = [f"in batches of 1..{max_batch} on {len(configs) - slots}"] if len(configs) > slots else []
    how += [f"in llama-server's batch compositions on {slots}"] if slots else []
    console.print(f"{BATCHED_RUN}: {probes} {model} pool probes {' and '.join(how)} configurations of {directory}")


@dataset_app.command("search-splitting")
def dataset_search_splitting(
    directory: Annotated[Path, typer.Argument(help="dataset directory")] = SHIPPED_DATASET,
    models: Annotated[
        Optional[str], typer.Option(help="comma-separated models (default: those no stored probe fully splits)")
    ] = None,
    candidates: Annotated[int, typer.Option(help="pool ids searched beyond the stored pool, per model")] = 100_000,
    keep: Annotated[int, typer.Option(help="probes kept per model: every configuration answers them")] = 64,
    near_share: Annotated[
        float, typer.Option(help="classes differing on at most this share of the pool are near twins")
    ] = 0.25,
) -> None:
    """Search the pool stream for probes that split near-twin classes; store every configuration's answers; resumable."""
    from hspi.collector.splitting_search import collect_searched_probes

    with progress_bar() as progress:
        task = progress.add_task("searching splitting probes", total=None)

        def on_progress(what: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=what)

        chosen = [m.strip() for m in models.split(",")] if models else None
        found = collect_searched_probes(
            directory, models=chosen, n_candidates=candidates, keep=keep, near_share=near_share, on_progress=on_progress
        )
    for model, search in found.items():
        best = max((p.pairs_split for p in search.selected), default=0)
        console.print(
            f"{model}: {len(search.selected)} probes kept of {search.candidates[1] - search.candidates[0]} "
            f"searched; best splits {best} of {search.pairs} near-twin pairs (stored pool: {search.best_stored})"
        )
