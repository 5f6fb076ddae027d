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
from hspi.cli_border import border_app
from hspi.shipped import CPU_CLASSIFIER, CPU_DATASET

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hardware and software platform inference.")
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect and merge fingerprint datasets.")
app.add_typer(dataset_app, name="dataset")
target_app = typer.Typer(no_args_is_help=True, help="Serve reference models as known targets.")
app.add_typer(target_app, name="target")
app.add_typer(border_app, name="border")
# Reports piped to a file or another program keep their long labels on one line.
console = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True)

SHIPPED_DATASET = CPU_DATASET
SHIPPED_CLASSIFIER = CPU_CLASSIFIER


def _progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=transient)


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
    endpoints: Annotated[bool, typer.Option(help="instead: audit live local endpoints (split 'endpoint'); "
                                                 "their rows replace earlier endpoint rows in --json")] = False,
    seeds: Annotated[int, typer.Option(help="endpoint audits per class, tier and batching mode")] = 4,
) -> None:
    """Measure every split x tier x head x method x queries; write JSON (and plots)."""
    if endpoints:
        _evaluate_endpoints(dataset, json_path, plots, models, seeds)
        return
    from hspi.dataset import Dataset
    from hspi.classifier.evaluation import Evaluation
    from hspi.features.tiers import check_tier

    tier_list = [check_tier(t) for t in _split(tiers)] if tiers else None
    result = Evaluation(Dataset(dataset), models=_split(models) if models else None, tiers=tier_list,
                        open_set=open_set, log=lambda s: err.print(s)).run()
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
    from hspi.endpoint_evaluation import evaluate_endpoints, merge_endpoint_rows, plot_endpoint_accuracy
    from hspi.shipped import shipped_classifier, shipped_dataset

    result: dict = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {"results": []}
    for model in _split(models) or ["lm-small"]:
        target = "llama.cpp" if model == "lm-gpt2" else "hspi-target"  # lm-gpt2's references are llama.cpp runs
        # lm-gpt2 has no border-prompt vote yet: no text tier for llama.cpp
        kwargs = {"batching": (False,), "tiers": ("topk20", "topk5", "top1")} if target == "llama.cpp" else {}
        measured = evaluate_endpoints(shipped_dataset(model) if target == "llama.cpp" else dataset,
                                      shipped_classifier(model), model, seeds=seeds, target=target,
                                      log=lambda s: err.print(s), **kwargs)
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


@dataset_app.command("replay-splitting")
def dataset_replay_splitting(
    directory: Annotated[Path, typer.Argument(help="dataset directory")] = SHIPPED_DATASET,
    rare_share: Annotated[float, typer.Option(help="classes differing on at most this share of the pool are near twins")] = 0.05,
) -> None:
    """Re-run the pool probes that split near-twin classes, one fresh process per configuration; resumable."""
    from hspi.collector.splitting_replay import collect_splitting_replay, splitting_selection
    from hspi.dataset import SPLITTING_RUN, Dataset

    splitting_selection(Dataset(directory), rare_share)  # a dataset with nothing to replay fails before any bar
    with _progress() as progress:
        task = progress.add_task("replaying splitting probes", total=None)

        def on_progress(config: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=f"{SPLITTING_RUN} {config}")

        ids = collect_splitting_replay(directory, rare_share=rare_share, on_progress=on_progress)
    console.print(f"{SPLITTING_RUN}: " + ", ".join(f"{m} {len(v)} probes" for m, v in ids.items()) + f" on every configuration of {directory}")


@dataset_app.command("search-splitting")
def dataset_search_splitting(
    directory: Annotated[Path, typer.Argument(help="dataset directory")] = SHIPPED_DATASET,
    models: Annotated[Optional[str], typer.Option(help="comma-separated models (default: those no stored probe fully splits)")] = None,
    candidates: Annotated[int, typer.Option(help="pool ids searched beyond the stored pool, per model")] = 100_000,
    keep: Annotated[int, typer.Option(help="probes kept per model: every configuration answers them")] = 64,
    near_share: Annotated[float, typer.Option(help="classes differing on at most this share of the pool are near twins")] = 0.25,
) -> None:
    """Search the pool stream for probes that split near-twin classes; store every configuration's answers; resumable."""
    from hspi.collector.splitting_search import collect_searched_probes

    with _progress() as progress:
        task = progress.add_task("searching splitting probes", total=None)

        def on_progress(what: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, description=what)

        chosen = [m.strip() for m in models.split(",")] if models else None
        found = collect_searched_probes(directory, models=chosen, n_candidates=candidates, keep=keep,
                                        near_share=near_share, on_progress=on_progress)
    for model, search in found.items():
        best = max((p.pairs_split for p in search.selected), default=0)
        console.print(f"{model}: {len(search.selected)} probes kept of {search.candidates[1] - search.candidates[0]} "
                      f"searched; best splits {best} of {search.pairs} near-twin pairs (stored pool: {search.best_stored})")


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


@target_app.command("serve")
def target_serve(
    model: Annotated[str, typer.Option(help="reference model to serve")] = "lm-small",
    platform: Annotated[str, typer.Option(help="platform id, e.g. cpu:avx2/bf16/torch-eager")] = "cpu:native/fp32/torch-eager",
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8801,
    top_logprobs: Annotated[int, typer.Option(help="tier cap: 20, 5, 1 (sampled token only) or 0 (text only)")] = 20,
    dynamic_batching: Annotated[bool, typer.Option(help="run requests that arrive together as one batch")] = False,
    max_batch: Annotated[int, typer.Option(help="largest dynamic batch")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="how long a dynamic batch waits for company")] = 5.0,
) -> None:
    """An OpenAI-compatible endpoint running a reference model on one platform of the grid."""
    import os

    from hspi.platform import Platform
    from hspi.collector.models import model_spec
    from hspi.collector.target_server import TIER_CAPS

    parsed = Platform.parse(platform)
    model_spec(model)
    if top_logprobs not in TIER_CAPS:
        raise ConfigError(f"--top-logprobs {top_logprobs}: allowed {', '.join(map(str, TIER_CAPS))}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    wanted = parsed.environment()
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        # ISA caps are read when torch loads: start again in a process that has them from the start
        from hspi.collector.local_run import LOAD_TIME_VARIABLES

        env = {k: v for k, v in os.environ.items() if k not in LOAD_TIME_VARIABLES}
        env.update(wanted)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "hspi", *sys.argv[1:]], env)
    import uvicorn

    from hspi.collector.target_server import create_target_app

    app_ = create_target_app(model, parsed, top_logprobs=top_logprobs, dynamic_batching=dynamic_batching,
                             max_batch=max_batch, batch_window_ms=batch_window_ms)
    err.print(f"serving {model} on {parsed.id} at http://{host}:{port}/v1 (logprobs cap {top_logprobs}"
              f"{', dynamic batching' if dynamic_batching else ''})")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def audit(
    endpoint: Annotated[str, typer.Option(help="base URL of the endpoint, e.g. http://127.0.0.1:8801/v1")],
    model: Annotated[str, typer.Option(help="the reference model the endpoint claims to serve")] = "lm-small",
    claim: Annotated[Optional[str], typer.Option(help="what the provider claims, e.g. dtype=fp32,hardware=x86-avx2")] = None,
    budget: Annotated[int, typer.Option(help="most queries to send (retries count)")] = 64,
    max_tokens: Annotated[Optional[int], typer.Option(help="most tokens to be billed (default: what the queries cost)")] = None,
    api: Annotated[str, typer.Option(help="completions or chat")] = "completions",
    served_model: Annotated[Optional[str], typer.Option(help="the model name the endpoint expects")] = None,
    order: Annotated[str, typer.Option(help="split (most informative probe next) or random")] = "split",
    max_tier: Annotated[str, typer.Option(help="richest tier to ask for: topk20, topk5, top1 or text")] = "topk20",
    seed: Annotated[Optional[int], typer.Option(help="probe-order seed (default: random)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 10.0,
    min_answers: Annotated[int, typer.Option(help="answers before a match may be declared; the extra ones verify "
                                                  "the leader against near twins never collected")] = 2,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the report as JSON here")] = None,
    evidence: Annotated[Optional[Path], typer.Option(help="append every answer to this JSONL file as it arrives")] = None,
    dataset: Annotated[Optional[Path], typer.Option(help="reference dataset (default: the shipped one)")] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="classifier directory (default: the shipped one)")] = None,
) -> None:
    """Audit a black-box endpoint: which platform served it, and does that fit the claim?

    The API key, if any, is read from the HSPI_TARGET_API_KEY environment variable, never from argv.
    """
    import os

    from pydantic import ValidationError

    from hspi.audit import AuditSettings, run_audit, write_report
    from hspi.claims import parse_claim
    from hspi.report import render_audit

    try:
        settings = AuditSettings(endpoint=endpoint, model=model, claim=parse_claim(claim), budget_queries=budget,
                                 budget_tokens=max_tokens, api=api, served_model=served_model, order=order,
                                 max_tier=max_tier, seed=seed, timeout_s=timeout, min_answers=min_answers,
                                 dataset=dataset, classifier=classifier)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first['loc'][0])  # named as the option the user typed
        flag = {"budget_queries": "budget", "budget_tokens": "max-tokens", "timeout_s": "timeout"}.get(field, field)
        raise ConfigError(f"--{flag.replace('_', '-')}: {first['msg']}") from None
    with _progress(transient=True) as progress:
        task = progress.add_task("auditing", total=budget)
        report = run_audit(settings, api_key=os.environ.get("HSPI_TARGET_API_KEY"), evidence_path=evidence,
                           on_query=lambda r, _: progress.update(task, completed=r.index + 1,
                                                                 description=f"auditing ({r.tier})"))
    if json_path is not None:
        write_report(report, json_path)
    render_audit(report, console)
    if report.stop == "interrupted":
        sys.exit(130)
    if report.stop == "target-error" and report.status == "no-evidence":
        sys.exit(5)


@app.command()
def serve(
    database: Annotated[Optional[str], typer.Option(help="sqlite:///hspi.db or postgresql+psycopg://user@host/db "
                                                         "(default: HSPI_DATABASE_URL, else sqlite:///hspi.db)")] = None,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[Optional[int], typer.Option(help="audits running at once (default 8)")] = None,
    per_host: Annotated[Optional[int], typer.Option(help="audits running at once per target host:port (default 2)")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(help="network (CIDR) or host name the SSRF guard admits "
                                                                 "although not public; repeatable")] = None,
    demo: Annotated[bool, typer.Option(help="also serve a demo target on loopback and print a curl line that audits it")] = False,
) -> None:
    """The audit REST API (/v1, OpenAPI at /docs) with background workers; Ctrl-C stops it.

    Other settings come from HSPI_* environment variables (HSPI_SECRET_KEY, HSPI_RATE_PER_MINUTE, ...).
    """
    from pydantic import ValidationError

    from hspi.api.server import serve as run_server
    from hspi.api.settings import ServiceSettings

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    given = {"database_url": database, "workers": workers, "per_host": per_host}
    try:
        settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        flag = {"database_url": "database"}.get(field, field).replace("_", "-")
        raise ConfigError(f"--{flag} (or HSPI_{field.upper()}): {first['msg'].lower()}") from None
    if allow_host:
        settings = settings.model_copy(update={"allow_hosts": [*settings.allow_hosts, *allow_host]})
    run_server(settings, host=host, port=port, demo=demo)


@app.command()
def scan(
    targets: Annotated[Path, typer.Argument(help="YAML or CSV list of targets: endpoint, model, claim, budget, name, "
                                                 "api_key_env, ...")],
    out: Annotated[Path, typer.Option(help="JSONL results, one line per target (resumed if it exists)")] = Path("scan.jsonl"),
    report: Annotated[Optional[Path], typer.Option(help="write an HTML report with a plot per head here")] = None,
    concurrency: Annotated[int, typer.Option(help="audits running at once")] = 16,
    per_host: Annotated[int, typer.Option(help="audits running at once per target host:port")] = 4,
    budget: Annotated[int, typer.Option(help="queries per target unless its entry says otherwise")] = 64,
    database: Annotated[Optional[str], typer.Option(help="where audits and answers are stored "
                                                         "(default: HSPI_DATABASE_URL, else sqlite:///hspi.db)")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(help="only these networks/host names may be scanned "
                                                                 "(default: any but cloud metadata); repeatable")] = None,
) -> None:
    """Audit many endpoints at once; interrupted, the same command resumes where it stopped."""
    import os

    from hspi.api.db import Database
    from hspi.api.scan import ScanOptions, load_targets, run_scan, target_secret
    from hspi.api.scan_report import write_html
    from hspi.api.security import Vault
    from hspi.api.settings import DEFAULT_DATABASE

    if concurrency < 1 or per_host < 1 or budget < 1:
        raise ConfigError("--concurrency, --per-host and --budget must be at least 1")
    entries = load_targets(targets)
    for entry in entries:
        target_secret(entry)  # a missing key fails before any progress bar is drawn
    db = Database(database or os.environ.get("HSPI_DATABASE_URL") or DEFAULT_DATABASE)
    db.migrate()
    vault = Vault.from_settings(os.environ.get("HSPI_SECRET_KEY"),
                                Path(os.environ.get("HSPI_SECRET_KEY_FILE", "hspi-secret.key")))
    options = ScanOptions(out=out, concurrency=concurrency, per_host=per_host, budget=budget,
                          **({"allow": tuple(allow_host)} if allow_host else {}))
    with _progress() as progress:
        audits = progress.add_task("audits", total=len(entries))
        queries = progress.add_task("queries", total=None)

        def on_progress(state) -> None:  # type: ignore[no-untyped-def]
            progress.update(audits, completed=state.finished,
                            description=f"audits ({state.skipped} from before)" if state.skipped else "audits")
            progress.update(queries, completed=state.queries, total=state.budget or None)

        try:
            state = run_scan(entries, targets, db, vault, options, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            err.print(f"interrupted: the answers so far are stored; run the same command again to resume ({out})")
            sys.exit(130)
    table = Table("target", "status", "verdict", "platform (full)", "queries", "stopped", title=f"scan of {targets}")
    for r in state.results:
        full = r["heads"].get("full")
        table.add_row(r["target"], r["status"], r["verdict"] or "-",
                      f"{full['guess']} ({full['probability']:.0%})" if full else "-",
                      f"{r['queries']}/{r['budget_queries']}", r["stop"] or "-")
    console.print(table)
    if report is not None:
        write_html(state.results, report, title=f"hspi scan of {targets.name}")
        console.print(f"report: {report}")
    console.print(f"results: {out} (scan {state.scan_id}, database {db.safe_url})")


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
