"""The `endpoint` split: audit live local endpoints, one per equivalence class, and score the reports.

Each class's first member is served by `hspi target serve` in its own process (its ISA caps set at
load), without and with dynamic batching; with batching, background clients keep the server busy
so audited requests share batches with strangers, as on a production endpoint.  Every audit runs
with the largest budget once and records each head's leading guess after every answer, so the
accuracy "within budget b" is the decision the audit held after at most b billed queries (an
audit that stopped early keeps its decision).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import numpy as np

from hspi.audit import AuditReport, AuditSettings, run_audit
from hspi.audit.references import ReferenceStore
from hspi.collector.models import CHAT_SUFFIX, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.prompt_codec import codec_for
from hspi.dataset import Dataset
from hspi.equivalence import EquivalenceClass, equivalence_classes
from hspi.errors import ConfigError, TargetError
from hspi.loopback import free_port, serving_process
from hspi.platform import HEADS, Platform
from hspi.terms import Tier

BUDGETS = (1, 4, 16, 64)
START_TIMEOUT_S = 300.0  # torch (and transformers) import + the first torch.compile on 2 busy cores


@contextmanager
def served_target(
    model: str,
    platform_id: str,
    *,
    top_logprobs: int = 20,
    dynamic_batching: bool = False,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """`hspi target serve` in a subprocess on a free loopback port; yields its /v1 URL, always stops it.
    `extra_args`: more of its options (e.g. `--logits-dtype fp8-e4m3`)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "hspi",
        "target",
        "serve",
        "--model",
        model,
        "--platform",
        platform_id,
        "--port",
        str(port),
        "--top-logprobs",
        str(top_logprobs),
    ]
    if dynamic_batching:
        cmd.append("--dynamic-batching")
    cmd += list(extra_args)
    url = f"http://127.0.0.1:{port}/v1"
    with (
        open(log_path or os.devnull, "w+b") as log,
        serving_process(
            cmd, url + "/models", timeout_s=START_TIMEOUT_S, log=log, what=f"hspi target serve ({platform_id})"
        ),
    ):
        yield url


def warm_up(url: str, model: str) -> None:
    """One request with a generous timeout: torch.compile compiles on the first call."""
    prompt = codec_for(model).decode(ProbeSet(model_spec(model), "fresh", 1).inputs(np.array([0]))[0])
    httpx.post(url + "/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0}, timeout=300.0)


@contextmanager
def background_load(url: str, model: str, clients: int = 3, *, generate: int = 1) -> Iterator[None]:
    """Strangers' traffic (fresh probes, never pool ones) so dynamic batches mix audited and other requests;
    each asks for 1..`generate` tokens (a continuous batcher then holds generating requests too)."""
    fresh, codec = ProbeSet(model_spec(model), "fresh", 400), codec_for(model)
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=10.0) as http:
            while not stop.is_set():
                prompt = codec.decode(fresh.inputs(np.array([int(rng.integers(0, 400))]))[0])
                tokens = int(rng.integers(1, generate + 1))
                try:
                    http.post(url + "/completions", json={"prompt": prompt, "max_tokens": tokens, "temperature": 0})
                except httpx.HTTPError:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)


def decision_at(report: AuditReport, budget: int) -> dict[str, str]:
    """Each head's leading guess after at most `budget` billed queries ({} if none was scored by then)."""
    leading: dict[str, str] = {}
    for record in report.evidence:
        if record.complete and record.queries_so_far <= budget:
            leading = record.leading
    return leading


def without_batch_size(platform_ids: Sequence[str]) -> set[str]:
    """The platforms with their static batch size dropped: a dynamic batcher has none, so under it a `bs=8`
    configuration and its batch-size-1 twin are one server."""
    return {Platform.parse(p).model_copy(update={"batch_size": 1}).id for p in platform_ids}


def head_right(
    cls: EquivalenceClass, head: str, named: str | None, classes: Sequence[EquivalenceClass], batching: bool
) -> bool:
    """Whether the head's guess is the served class's label; under batching, the full head's guess is also
    right when the named class differs from it by the static batch size only."""
    if named == cls.labels[head]:
        return True
    if not batching or head != "full" or named is None:
        return False
    other = next((c for c in classes if c.labels["full"] == named), None)
    return other is not None and bool(without_batch_size(other.members) & without_batch_size(cls.members))


def score_audits(
    audits: Sequence[tuple[EquivalenceClass, AuditReport]],
    budgets: Sequence[int],
    *,
    classes: Sequence[EquivalenceClass] = (),
    batching: bool = False,
) -> dict:
    """Per head and budget: (correct, n)."""
    out: dict = {}
    for head in HEADS:
        for b in budgets:
            correct = sum(head_right(cls, head, decision_at(r, b).get(head), classes, batching) for cls, r in audits)
            out[(head, b)] = (correct, len(audits))
    return out


def hspi_target_server(model: str) -> Callable[[str, bool], AbstractContextManager[str]]:
    def serve(platform_id: str, dynamic_batching: bool) -> AbstractContextManager[str]:
        return served_target(model, platform_id, dynamic_batching=dynamic_batching)

    return serve


def llama_cpp_target_server(model: str) -> Callable[[str, bool], AbstractContextManager[str]]:
    """The real `llama_cpp.server` (it batches nothing across requests: `dynamic_batching` must be False)."""
    from hspi.collector.llama_cpp_server import llama_cpp_server
    from hspi.platform import Platform

    def serve(platform_id: str, dynamic_batching: bool) -> AbstractContextManager[str]:
        if dynamic_batching:
            raise TargetError("target-error: llama_cpp.server has no dynamic batching to measure")
        return llama_cpp_server(Platform.parse(platform_id), model)

    return serve


def llama_server_target(model: str) -> Callable[[str, bool], AbstractContextManager[str]]:
    """llama.cpp's C++ `llama-server` with the class's slots: it batches concurrent requests by itself, so
    the same server is measured with and without background clients."""
    from hspi.collector.llama_server import llama_server

    def serve(platform_id: str, dynamic_batching: bool) -> AbstractContextManager[str]:
        return llama_server(Platform.parse(platform_id), model)

    return serve


SERVERS = {
    "hspi-target": hspi_target_server,
    "llama.cpp": llama_cpp_target_server,
    "llama-server": llama_server_target,
}
GENERATED_BY_BACKGROUND = {"llama-server": 8}  # a continuous batcher mixes prompts with generating requests


def evaluate_endpoints(
    dataset_dir: Path,
    classifier_dir: Path,
    model: str = "lm-small",
    *,
    tiers: Sequence[str] = ("topk20", "topk5", "top1", "text"),
    batching: Sequence[bool] = (False, True),
    batching_tiers: Sequence[str] = ("topk20",),
    seeds: int = 3,
    budgets: Sequence[int] = BUDGETS,
    only: Sequence[str] | None = None,
    target: str = "hspi-target",
    background_clients: int = 3,
    reference_modes: Sequence[bool] = (True,),
    leave_out: Callable[[EquivalenceClass], Path] | None = None,
    api: str = "completions",
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Rows of the `endpoint` split plus audit timings, for every class of `model` (or those in `only`).

    `target` is "hspi-target" (`hspi target serve`), "llama.cpp" (the real `llama_cpp.server`) or "llama-server"
    (llama.cpp's C++ server, for classes with slots).
    `reference_modes`: audit with the dataset's answers under batching (True) and/or without (False),
    against the same server; rows say which in `batched_references`.
    `leave_out`: a class's dataset without it (`leave_class_out`); with it, each served class is audited
    again against it (an unseen platform), and `open_set` holds both audits' final e-values.
    `api` "chat": a registered model asked through its chat template, matched against `MODEL:chat`'s classes.
    """
    if target not in SERVERS:
        raise ConfigError(f"unknown endpoint target {target!r}; known: {', '.join(SERVERS)}")
    serve = SERVERS[target](model)
    generate = GENERATED_BY_BACKGROUND.get(target, 1)
    ds = Dataset(dataset_dir)
    references = f"{model}{CHAT_SUFFIX}" if api == "chat" else model
    every_class = equivalence_classes(ds, references)
    classes = [c for c in every_class if only is None or c.name in only]
    # the shipped matcher learned from replayed answers on these pool probes: audits never ask them
    seen = sorted(
        {
            int(p)
            for cid in ds.complete_configs(references, ("replay",))
            for p in ds.responses(cid, "replay", references).probe_ids
        }
    )
    # one store for every audit: each dataset's reference views are computed once (a llama-server class's
    # views follow its own logprob arithmetic, row by row: seconds per dataset, not per audit)
    store = ReferenceStore()
    audits: dict[tuple[str, bool, bool], list[tuple[EquivalenceClass, AuditReport]]] = {}
    seconds: dict[tuple[str, bool, bool], list[float]] = {}
    failures: list[str] = []
    open_set: list[dict] = []
    for i, cls in enumerate(classes):
        for dyn in batching:
            run_tiers = batching_tiers if dyn else tiers
            log(f"[{i + 1}/{len(classes)}] {cls.name} {'dynamic batching' if dyn else 'static batches'}")
            try:
                with serve(cls.members[0], dyn) as url:
                    warm_up(url, model)
                    load = background_load(url, model, background_clients, generate=generate)
                    with load if dyn else _nothing():
                        for tier, batched_refs, seed in itertools.product(run_tiers, reference_modes, range(seeds)):
                            settings = AuditSettings(
                                endpoint=url,
                                model=model,
                                api=api,  # type: ignore[arg-type]  # "completions" or "chat"
                                budget_queries=max(budgets),
                                max_tier=Tier(tier),
                                seed=1000 * i + seed,
                                dataset=dataset_dir,
                                classifier=classifier_dir,
                                timeout_s=30.0,
                                avoid_probes=seen,
                                batched_references=batched_refs,
                            )
                            report = run_audit(settings, references=store)
                            audits.setdefault((tier, dyn, batched_refs), []).append((cls, report))
                            seconds.setdefault((tier, dyn, batched_refs), []).append(report.seconds)
                            if leave_out is not None and batched_refs == reference_modes[0]:
                                unseen = run_audit(
                                    settings.model_copy(update={"dataset": leave_out(cls)}), references=store
                                )
                                open_set.append(
                                    {
                                        "class": cls.name,
                                        "tier": tier,
                                        "batching": dyn,
                                        "batched_references": batched_refs,
                                        "known_log_evalue": final_log_evalue(report),
                                        "unseen_log_evalue": final_log_evalue(unseen),
                                        "unseen_status": str(unseen.status),
                                        "unseen_full": unseen.heads["full"].guesses[0].label
                                        if unseen.heads.get("full") and unseen.heads["full"].guesses
                                        else None,
                                    }
                                )
            except TargetError as exc:
                failures.append(f"{cls.name}: {exc}")
                log(f"  failed: {exc}")
    rows, batching_rows = [], []
    for (tier, dyn, batched_refs), items in audits.items():
        for (head, b), (correct, n) in score_audits(items, budgets, classes=every_class, batching=dyn).items():
            rows.append(
                {
                    "split": "endpoint",
                    "model": model,
                    "api": api,
                    "tier": tier,
                    "head": head,
                    "method": "lightgbm-sequential",
                    "queries": b,
                    "accuracy": round(correct / n, 4),
                    "n_test": n,
                    "target": target,
                    "batching": dyn,
                    "background_clients": background_clients if dyn else 0,
                    "batched_references": batched_refs,
                }
            )
        readings = [r.batching.state if r.batching else "none" for _, r in items]
        per_class: dict[str, dict[str, int]] = {}
        for c, r in items:
            state = r.batching.state if r.batching else "none"
            per_class.setdefault(c.name, {}).setdefault(state, 0)
            per_class[c.name][state] += 1
        batching_rows.append(
            {
                "split": "endpoint",
                "model": model,
                "tier": tier,
                "check": "batching",
                "target": target,
                "batching": dyn,
                "background_clients": background_clients if dyn else 0,
                "batched_references": batched_refs,
                "queries": max(budgets),
                # the audit's own reading of batching, right when it says observed under batching, not observed without
                "accuracy": round(sum(x == ("observed" if dyn else "not observed") for x in readings) / len(items), 4),
                "readings": {x: readings.count(x) for x in sorted(set(readings))},
                "per_class": per_class,
                "n_test": len(items),
            }
        )
    timing = [
        {
            "tier": t,
            "batching": d,
            "batched_references": m,
            "audits": len(v),
            "seconds_p50": round(float(np.median(v)), 3),
            "seconds_max": round(float(np.max(v)), 3),
            "queries_mean": round(float(np.mean([r.queries for _, r in audits[(t, d, m)]])), 2),
        }
        for (t, d, m), v in seconds.items()
    ]
    return {
        "rows": rows,
        "timing": timing,
        "failures": failures,
        "batching_readings": batching_rows,
        "open_set": open_set,
    }


def final_log_evalue(report: AuditReport) -> float | None:
    """The audit's final log e-value against a platform never collected (None: every candidate parted)."""
    bound = report.evidence_bound
    return None if bound is None else bound.log_evalue


def leave_class_out(dataset_dir: Path, cls: EquivalenceClass, root: Path) -> Path:
    """A view of the dataset without `cls`'s configurations (its manifest rewritten, the shards linked):
    what an audit of that class's server meets when its platform was never collected."""
    from hspi.dataset import load_manifest, save_manifest

    out = root / cls.name.replace("/", "_").replace(":", "_")
    if not (out / "dataset.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(dataset_dir)
        manifest.configs = {c: r for c, r in manifest.configs.items() if c not in cls.members}
        if not (out / "shards").exists():
            (out / "shards").symlink_to((dataset_dir / "shards").resolve(), target_is_directory=True)
        save_manifest(out, manifest)
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def merge_endpoint_rows(result: dict, measured: dict, *, target: str) -> None:
    """Replace `result`'s endpoint rows for this target, model, tier and batching mode with the measured ones."""
    models = {r["model"] for r in measured["rows"]}
    replaced = {(r["model"], r["tier"], r["batching"]) for r in measured["rows"]}  # only what was measured again
    result["results"] = [
        r
        for r in result.get("results", [])
        if not (
            r["split"] == "endpoint"
            and r.get("target") == target
            and (r["model"], r["tier"], r.get("batching")) in replaced
        )
    ]
    result["results"].extend(measured["rows"])
    timing = [
        t
        for t in result.get("endpoint_timing", [])
        if not (t.get("target") == target and (t.get("model"), t["tier"], t["batching"]) in replaced)
    ]
    timing += [{**t, "target": target, "model": m} for m in models for t in measured["timing"]]
    result["endpoint_timing"] = timing
    result["endpoint_failures"] = measured["failures"] + [
        f for f in result.get("endpoint_failures", []) if not any(f.startswith(m) for m in models)
    ]


def plot_endpoint_accuracy(result: dict, path: Path) -> None:
    """Accuracy vs budget per tier and head for every endpoint target (one panel per target x batching)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("results", []) if r["split"] == "endpoint"]

    def panel(r: dict) -> tuple[str, str, str, bool]:
        return r["target"], r["model"], r.get("api", "completions"), bool(r.get("batching"))

    panels = sorted({panel(r) for r in rows})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (target, model, api, batching) in zip(axes[0], panels):
        mine = [r for r in rows if panel(r) == (target, model, api, batching)]
        for tier in sorted({r["tier"] for r in mine}):
            for head, style in (("full", "-"), ("dtype", "--")):
                pts = sorted((r["queries"], r["accuracy"]) for r in mine if r["tier"] == tier and r["head"] == head)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{tier} {head}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("budget (queries)")
        ax.set_ylabel("accuracy")
        via = "" if api == "completions" else f" / {api}"
        ax.set_title(f"{target} / {model}{via}{' / dynamic batching' if batching else ''}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
