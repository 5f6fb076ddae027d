"""`hspi demo`: a hidden platform of the grid in a fresh process, identified from a few answers."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from hspi.cli.app import SHIPPED_CLASSIFIER, SHIPPED_DATASET, app, console, err


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
    from hspi.audit.identify import identify
    from hspi.classifier.artifacts import load_matcher
    from hspi.cli.render import render_verdict
    from hspi.collector.local_run import run_in_fresh_process
    from hspi.collector.reproduction import reproduces_here
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes
    from hspi.errors import CollectionError
    from hspi.features.tiers import check_tier

    check_tier(tier)
    ds = Dataset(dataset)
    matcher, _ = load_matcher(classifier / model / tier)
    rng = random.Random(seed)
    # the references come from one machine: hide a platform this machine reproduces (measured), so the
    # demo shows identification, not the gap between two CPUs (that is what an audit's "unknown" is for)
    candidates = ds.complete_configs(model)
    rng.shuffle(candidates)
    err.print(f"choosing a hidden platform whose references this machine reproduces ({model})...")
    config_id = next((c for c in candidates if reproduces_here(ds, c, [model])), None)
    if config_id is None:
        raise CollectionError(f"this machine reproduces no configuration of {ds.manifest.name} for {model}")
    platform = ds.manifest.configs[config_id].platform
    err.print(f"running a hidden platform in a fresh process ({queries} pool probes of {model})...")
    with tempfile.TemporaryDirectory(prefix="hspi-demo-") as tmp:
        responses = run_in_fresh_process(
            platform, model, ds.manifest.probe_sets[model], queries, seed=rng.randrange(2**31), workdir=Path(tmp)
        )
    verdict = identify(ds, matcher, responses, tier)

    cls = next(c for c in equivalence_classes(ds, model) if config_id in c.members)
    render_verdict(verdict, console, truth=cls.labels)
    console.print(f"the hidden platform was [bold]{platform.id}[/bold] (class {cls.name})")
