"""The false-match bound (audit.decision) measured on real near twins: how often an audit says `match`
for a platform it never saw, under the old rule (posterior >= 0.99 after min_answers = 2) and the new
one (the same, plus the mixture e-value >= 1/α, α = false_match_rate = 0.01).

    python benchmarks/verdicts.py [SEEDS [PAIR_TIME_S]]   # writes results/verdicts.json and results/verdicts.png

The new rule is the default since it was measured here (AuditSettings.false_match_rate = 0.01): an audit
whose leader fits but whose bound the budget (64 queries) or the pool cannot reach stops early
(`bound-out-of-reach`, verdict inconclusive) instead of spending the rest.

Every audit is the real `Audit` engine (split/verify probe order, budget 64 queries) against a `Target`
that *replays stored outputs*: it answers a pool probe with the full output vector a configuration
returned when it was collected, and the tier shows what a float32 server would (features.tiers).

Near twins, never collected as far as the audit knows:
  (a) leave one class out: each class of datasets/cpu-amd-epyc in turn is removed from the candidates
      (its references and its `same` rows, hence a_p too) and its stored pool outputs are audited.
      Limitation: the matcher is the shipped one, trained with every class (retraining per class is
      too slow here).  It is a pairwise model (answer vs a candidate's reference → same platform?),
      so what leaks is how the held-out class's answers differ from others, and its threshold.
  (b) vendor: the configurations of ../shared/datasets/cpu-intel-xeon whose pool outputs, as the
      tier shows them, differ from every AMD class on at least one pool probe: real Intel outputs
      replayed against the shipped AMD references and classifier (Intel has only the 1,000-probe
      reference pool: the AMD searched probes are kept out with avoid_probes).
Far-off engines computed here, in-process (per-engine unknown-platform rate):
  float64-torch→fp32   the float32 module cast .double(), manual attention, outputs rounded to float32
  bf16-weights-fp32    the float32 module with every parameter rounded to bfloat16, computed in float32
Known classes (the cost): every AMD class audited with all classes present, queries per audit.

Time (2 shared cores): each model/tier gets PAIR_TIME_S seconds; its targets are audited round-robin
over the four kinds until then (`coverage` says how many were), results are written after every pair.

A "false match" is an audit whose report says status `match` (any class): the target is none of them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np

from hspi.audit.decision import (
    BoundReading,
    MatchBound,
    agreement_rates,
    answers_to_bound,
    decide,
)
from hspi.audit.engine import Audit, AuditSettings, audit_budget, per_query_tokens
from hspi.audit.references import ModelReferences, ReferenceStore
from hspi.classifier.sequential import answer_signatures
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import QueryBudget
from hspi.dataset import Dataset
from hspi.features.tiers import tier_view
from hspi.responses import Responses
from hspi.shipped import ROOT
from hspi.terms import MatchStatus, Tier

RESULTS = Path(__file__).parent / "results"
INTEL = ROOT.parent / "shared" / "datasets" / "cpu-intel-xeon"
SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2
# seconds each model/tier audits its targets for (2 shared cores)
PAIR_TIME_S = float(sys.argv[2]) if len(sys.argv) > 2 else 95.0
MODELS = ("lm-small", "mlp", "cnn")
TIERS = (Tier.TOPK20, Tier.LOGITS)
# interleaved, so that a run cut short by the time limit still covers every model and both tiers
PAIRS = [
    ("lm-small", Tier.TOPK20),
    ("cnn", Tier.LOGITS),
    ("mlp", Tier.LOGITS),
    ("cnn", Tier.TOPK20),
    ("lm-small", Tier.LOGITS),
    ("mlp", Tier.TOPK20),
]
BUDGET = 64
ALPHA = 0.01
TIME_LIMIT_S = 7 * PAIR_TIME_S  # no new model/tier starts after this
HELD_OUT = 0.3  # share of the pool kept out of an audit, per seed > 0
OLD_RULE_SEEDS = 1  # the old rule is measured on the first seeds only (time: 2 cores)


def rules(seed: int) -> tuple[bool, ...]:
    """Which rules an audit seed runs: old (True) and new (False), or the new one only."""
    return (True, False) if seed < OLD_RULE_SEEDS else (False,)


class ReplayTarget(Target):
    """Answers pool probes with stored (or precomputed) full outputs: real outputs, replayed."""

    kind = "replay"

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        self.row = {int(p): i for i, p in enumerate(responses.probe_ids)}

    budget: QueryBudget | None = None  # the audit's: each answer spends one query, as over HTTP

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        if self.budget is not None:
            self.budget.spend(per_query_tokens(self.responses.model))
        rows = [self.row[int(i)] for i in ids]
        r = self.responses
        return Responses(r.model, r.probe_set, r.probe_ids[rows], r.native[rows], r.native_dtype)


class FixedReferences(ReferenceStore):
    """A store whose references for one model are given (a class left out); the dataset's other models
    (which the heads' bounds pool over) come from `store` without the left-out platforms."""

    def __init__(
        self, refs: ModelReferences, store: ReferenceStore | None = None, held: set[str] = frozenset()
    ) -> None:
        super().__init__()
        self.refs, self.store, self.held = refs, store, set(held)
        self._others: dict[str, ModelReferences] = {}

    def references(self, model: str, dataset: Path | None = None) -> ModelReferences:
        if model == self.refs.model or self.store is None:
            return self.refs
        if model not in self._others:
            self._others[model] = without_members(self.store.references(model, dataset), self.held)
        return self._others[model]


def without_members(refs: ModelReferences, held: set[str]) -> ModelReferences:
    """`refs` as a collection without the configurations `held` would be: a class made only of them goes,
    a class that also holds others stays, labelled by the others alone."""
    from hspi.equivalence import EquivalenceClass

    configs = Dataset(refs.dataset_dir).manifest.configs
    classes, logits = [], []
    for cls, out in zip(refs.classes, refs.logits, strict=True):
        members = tuple(m for m in cls.members if m not in held)
        if not members:
            continue
        labels = {h: "|".join(sorted({configs[m].labels[h] for m in members})) for h in cls.labels if h != "full"}
        classes.append(EquivalenceClass(members[0], members, {**labels, "full": members[0]}))
        logits.append(out)
    return ModelReferences(refs.dataset_dir, refs.model, classes, refs.pool, refs.pool_ids, logits, refs.first_tokens)


class OldRuleAudit(Audit):
    """The rule before issue 15: posterior >= confidence after min_answers, no bound."""

    def bound_reading(self) -> BoundReading | None:
        return BoundReading(
            alpha=1.0, log_evalue=0.0, log_threshold=0.0, leader_log_evalue=0.0, leader=-1, answers=0, met=True
        )


def without(refs: ModelReferences, *held: int) -> ModelReferences:
    keep = [i for i in range(len(refs.classes)) if i not in held]
    return ModelReferences(
        refs.dataset_dir,
        refs.model,
        [refs.classes[i] for i in keep],
        refs.pool,
        refs.pool_ids,
        [refs.logits[i] for i in keep],
        refs.first_tokens,
    )


@dataclass
class Outcome:
    match: bool
    queries: int
    stop: str
    log_e: float | None
    probes: list[int]
    decided: dict[str, str]  # head -> the value the report states as decided (its own bound, or the class's)


def audit(store: ReferenceStore, model: str, tier: Tier, target: Target, seed: int, *, old: bool, avoid=()) -> Outcome:
    settings = AuditSettings(
        endpoint=f"replay://{target.kind}",
        model=model,
        max_tier=tier,
        budget_queries=BUDGET,
        seed=seed,
        min_answers=2,
        false_match_rate=ALPHA,
        avoid_probes=list(avoid),
    )
    cls = OldRuleAudit if old else Audit
    budget = audit_budget(settings)
    target.budget = budget  # type: ignore[attr-defined]
    # the split/verify order is deterministic up to ties: each seed > 0 also keeps a random 30% of the
    # pool out (as an evaluation keeps training probes out), so seeds give different probe sequences
    pool_ids = store.references(model).pool_ids
    if seed > 0:
        held = np.random.default_rng(seed).random(len(pool_ids)) < HELD_OUT
        settings.avoid_probes = sorted(set(settings.avoid_probes) | {int(p) for p in pool_ids[held]})
    report = cls(settings, store, target, budget=budget).run()
    bound = report.evidence_bound
    return Outcome(
        report.status is MatchStatus.MATCH,
        len(report.evidence),  # answers asked (a replay target bills nothing)
        str(report.stop),
        None if old or bound is None else bound.log_evalue,
        [r.probe_id for r in report.evidence],
        {h: r.guesses[0].label for h, r in report.heads.items() if r.decided and r.guesses},
    )


def float64_engine(model: str, pool: ProbeSet, ids: np.ndarray) -> Responses:
    from hspi.collector.targets.oracle import float64_outputs

    out = float64_outputs(pool, ids).astype(np.float32)
    return Responses(model, pool.version, ids.astype(np.int32), out, "float32")


def bf16_weights_engine(model: str, pool: ProbeSet, ids: np.ndarray) -> Responses:
    import torch

    from hspi.collector.models import build_model

    module = build_model(model)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(ids), 256):
            chunks.append(module(torch.from_numpy(pool.inputs(ids[start : start + 256]))).numpy())
    return Responses(model, pool.version, ids.astype(np.int32), np.concatenate(chunks).astype(np.float32), "float32")


ENGINES = {"float64-torch->fp32": float64_engine, "bf16-weights-fp32": bf16_weights_engine}


def differs_from_all(candidate: np.ndarray, references: list[np.ndarray], rows: np.ndarray, tier: str) -> bool:
    """Whether `candidate` (on `rows` of the pool) shows other bits than every reference at this tier."""
    mine = tier_view(candidate, tier)
    for ref in references:
        theirs = tier_view(ref[rows], tier)
        if np.array_equal(mine.ids, theirs.ids) and np.array_equal(
            mine.values.view(np.uint32), theirs.values.view(np.uint32)
        ):
            return False
    return True


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [round(lo, 5), round(hi, 5)]


def rate_row(outcomes: list[Outcome]) -> dict:
    k, n = sum(o.match for o in outcomes), len(outcomes)
    return {
        "false_match_rate": round(k / n, 5) if n else None,
        "false_matches": k,
        "false_match_ci": clopper_pearson(k, n) if n else None,
        "n_audits": n,
        "distinct_probe_sequences": len({tuple(o.probes) for o in outcomes}),  # over all targets
        "median_queries": float(np.median([o.queries for o in outcomes])) if n else None,
    }


def main() -> None:
    started = time.perf_counter()
    store = ReferenceStore()
    intel = Dataset(INTEL)
    rows: list[dict] = []  # one per audit
    skipped: list[str] = []  # model/tier pairs left out by the time limit
    coverage: list[dict] = []  # per pair: how many of its targets were audited within its time share
    engines_of: dict[str, dict[str, Responses]] = {}
    for model, tier in PAIRS:
        if time.perf_counter() - started > TIME_LIMIT_S:
            skipped.append(f"{model}/{tier}")
            continue
        refs = store.references(model)
        pool = refs.pool
        intel_pool = intel.pool_references(next(iter(intel.manifest.configs)), model)
        in_intel = np.isin(refs.pool_ids, intel_pool.probe_ids)
        intel_rows = np.flatnonzero(in_intel)
        avoid_for_intel = [int(p) for p in refs.pool_ids[~in_intel]]
        if model not in engines_of:
            engines_of[model] = {name: make(model, pool, refs.pool_ids) for name, make in ENGINES.items()}
        engines = engines_of[model]
        t0 = time.perf_counter()
        book = refs.book(tier)
        agreement = book.agreement
        tasks: dict[str, list[tuple]] = {"leave-one-out": [], "intel-vendor": [], "engine": [], "known": []}
        # (a) leave one class out: the held-out class's stored outputs against the others
        for held, cls in enumerate(refs.classes):
            nearest = float(np.delete(agreement[held], held).max())
            if nearest >= 1.0:  # indistinguishable at this tier from a class left in: not a platform never seen
                continue
            stored = ReplayTarget(Dataset(refs.dataset_dir).pool_references(cls.members[0], model))
            loo = FixedReferences(without(refs, held), store, set(cls.members))
            truth = dict(cls.labels)
            tasks["leave-one-out"] += [(cls.name, stored, loo, (), nearest, seed, truth) for seed in range(SEEDS)]
            if nearest < 1.0:  # (known classes: the cost in queries, seed 0: the order is deterministic up to ties)
                tasks["known"].append((cls.name, stored, store, (), None, 0, truth))
        # (b) Intel configurations that differ from every AMD class at this tier
        for cid in intel.manifest.configs:
            try:
                responses = intel.pool_references(cid, model)
            except Exception:  # a configuration without this model
                continue
            if not np.array_equal(responses.probe_ids, refs.pool_ids[intel_rows]):
                raise SystemExit(f"{cid}: Intel pool ids differ from the AMD reference pool")
            mine = responses.as_float32()
            if not differs_from_all(mine, refs.logits, intel_rows, str(tier)):
                continue
            shown = tier_view(mine, str(tier)).values.view(np.uint32)
            near = max(
                float(np.mean((shown == tier_view(ref[intel_rows], str(tier)).values.view(np.uint32)).all(axis=1)))
                for ref in refs.logits
            )
            target = ReplayTarget(responses)
            truth = dict(intel.manifest.configs[cid].labels)
            tasks["intel-vendor"] += [(cid, target, store, avoid_for_intel, near, seed, truth) for seed in range(SEEDS)]
        # far-off engines
        for name, responses in engines.items():
            tasks["engine"] += [(name, ReplayTarget(responses), store, (), None, seed, {}) for seed in range(SEEDS)]
        # round-robin over the kinds, so that a pair cut short by its time share still has each kind
        queue = [t for group in zip_longest(*tasks.values()) for t in group if t is not None]
        kinds = [k for group in zip_longest(*[[k] * len(v) for k, v in tasks.items()]) for k in group if k]
        deadline = t0 + PAIR_TIME_S
        done = 0
        for kind, (name, target, where, avoid, near, seed, truth) in zip(kinds, queue, strict=True):
            if time.perf_counter() > deadline:
                break
            for old in rules(seed):
                o = audit(where, model, tier, target, seed, old=old, avoid=avoid)
                rows.append(
                    dict(
                        kind=kind,
                        model=model,
                        tier=str(tier),
                        target=name,
                        nearest_agreement=None if near is None else round(near, 4),
                        seed=seed,
                        rule="old" if old else "new",
                        truth=truth,
                        **o.__dict__,
                    )
                )
            done += 1
        coverage.append({"model": model, "tier": str(tier), "tasks": len(queue), "done": done})
        print(f"{model} {tier}: {time.perf_counter() - t0:.0f} s, {done}/{len(queue)} targets", flush=True)
        summarise(rows, time.perf_counter() - started, skipped, coverage)  # written after every pair
    summarise(rows, time.perf_counter() - started, skipped, coverage)


def answers_needed(models: tuple[str, ...] = (*MODELS, "lm-gpt2"), tiers: tuple[Tier, ...] = TIERS) -> list[dict]:
    """Per model and tier: the fewest answers that could bound each class at ALPHA from no evidence (every
    answer agreeing on the class's most telling pool probes; `audit.decision.answers_to_bound`), and the
    agreement of the closest pair of known classes (the twins that calibrate a_p)."""
    store, out = ReferenceStore(), []
    bound = MatchBound(alpha=ALPHA)
    for model in models:
        refs = store.references(model)
        for tier in tiers:
            book = refs.book(tier)
            rates = agreement_rates(book.same, bound)
            none = np.zeros(0, dtype=np.int64)
            reading = decide(rates, none, np.zeros((0, rates.shape[0]), dtype=bool), bound)
            needed = {}
            for c, cls in enumerate(refs.classes):
                alone = np.full(rates.shape[0], -np.inf)
                alone[c] = 0.0
                needed[cls.name] = answers_to_bound(rates, reading, np.arange(rates.shape[1]), alone)
            closest = book.agreement[~np.eye(len(refs.classes), dtype=bool)].max()
            finite = [n for n in needed.values() if n is not None]
            out.append(
                {
                    "model": model,
                    "tier": str(tier),
                    "classes": len(needed),
                    "closest_pair_agreement": round(float(closest), 4),
                    "fewest_answers": {"min": min(finite), "max": max(finite)} if finite else None,
                    "never_bounded_with_this_pool": sorted(name for name, n in needed.items() if n is None),
                    "per_class": needed,
                }
            )
    return out


def partings_vs_known_twins(targets: list[dict]) -> list[dict]:
    """For each false-matched Intel target: on which share of probes it parts from the AMD class it matched,
    and how well "known twins part here" (the share of known near-twin pairs, agreement in [0.5, 1), that
    part on the probe) predicts where it parts (ROC AUC; 0.5 = no better than chance)."""
    from sklearn.metrics import roc_auc_score

    store, intel, out = ReferenceStore(), Dataset(INTEL), []
    for t in {(r["model"], r["tier"], r["target"]) for r in targets if r["kind"] == "intel-vendor"}:
        model, tier, cid = t
        refs = store.references(model)
        book = refs.book(Tier(tier))
        responses = intel.pool_references(cid, model)
        rows = np.flatnonzero(np.isin(refs.pool_ids, responses.probe_ids))
        same = book.same[:, :, rows]
        pairs = [(i, j) for i in range(len(same)) for j in range(i + 1, len(same)) if 0.5 <= same[i, j].mean() < 1]
        fragility = np.mean([~same[i, j] for i, j in pairs], axis=0) if pairs else np.zeros(len(rows))
        mine = answer_signatures(tier_view(responses.as_float32(), tier))
        agree = book.signatures[:, rows] == mine[None, :]
        nearest = int(np.argmax(agree.mean(axis=1)))
        parts = ~agree[nearest]
        out.append(
            {
                "model": model,
                "tier": tier,
                "target": cid,
                "matched_class": refs.classes[nearest].name,
                "agreement": round(float(agree[nearest].mean()), 4),
                "parting_probes": int(parts.sum()),
                "known_twin_pairs": len(pairs),
                "auc_known_twins_part_here": round(float(roc_auc_score(parts, fragility)), 3)
                if 0 < parts.sum() < len(parts)
                else None,
                "answers_to_exclude_at_alpha_if_parting_uniform": math.ceil(
                    math.log(ALPHA) / math.log(float(agree[nearest].mean()))
                ),
            }
        )
    return sorted(out, key=lambda r: (r["model"], r["tier"], r["target"]))


def parting_probes(auroc_rows: list[dict], below: float = 0.95) -> list[dict]:
    """For each left-out class whose AUROC is below `below`: its near twins among the other classes
    (agreement >= 0.5 at that tier) and the pool probes on which it parts from each."""
    store, out = ReferenceStore(), []
    for row in auroc_rows:
        if row["auroc"] >= below:
            continue
        refs = store.references(row["model"])
        book = refs.book(Tier(row["tier"]))
        names = [c.name for c in refs.classes]
        me = names.index(row["held_out_class"])
        twins = []
        for j in np.argsort(-book.agreement[me]):
            if j == me or book.agreement[me, j] < 0.5:
                continue
            parting = refs.pool_ids[~book.same[me, j]]
            twins.append(
                {
                    "class": names[j],
                    "agreement": round(float(book.agreement[me, j]), 4),
                    "parting_probes": [int(p) for p in parting[:50]],
                    "n_parting": int(len(parting)),
                }
            )
        out.append({**row, "twins": twins})
    return out


def summarise(rows: list[dict], seconds: float, skipped: list[str], coverage: list[dict]) -> None:
    def pick(**kw):
        return [
            Outcome(r["match"], r["queries"], r["stop"], r["log_e"], r["probes"], r.get("decided", {}))
            for r in rows
            if all(r[k] == v for k, v in kw.items())
        ]

    twins = ("leave-one-out", "intel-vendor")
    result: dict = {
        "alpha": ALPHA,
        "seeds": SEEDS,
        "budget_queries": BUDGET,
        "seconds": round(seconds, 1),
        "skipped_for_time": skipped,
        "coverage": coverage,
        "rules": {
            "old": "match: posterior >= 0.99 and the matcher accepts, after min_answers = 2 answers",
            "new": "old, and the mixture e-value (1/C) sum_c prod_p 1[answer == c's stored answer] / a_p(c) >= 1/alpha "
            "(a_p per near-twin count and level, prior = the closest known pair); a head short of that is decided "
            "when its own e-value (1/C) sum_{c of value v} b^-answers >= 1/alpha (b = closest pair of other values)",
        },
        "near_twins": {},
        "by_split": [],
        "unseen_engines": [],
        "known_classes": [],
    }
    for rule in ("old", "new"):
        near = [o for kind in twins for o in pick(kind=kind, rule=rule)]
        result["near_twins"][rule] = rate_row(near)
    for kind in twins:
        for model in MODELS:
            for tier in TIERS:
                for rule in ("old", "new"):
                    out = pick(kind=kind, model=model, tier=str(tier), rule=rule)
                    if out:
                        result["by_split"].append(
                            {"kind": kind, "model": model, "tier": str(tier), "rule": rule, **rate_row(out)}
                        )
    for name in ENGINES:
        for rule in ("old", "new"):
            out = pick(kind="engine", target=name, rule=rule)
            if not out:
                continue
            result["unseen_engines"].append(
                {
                    "engine": name,
                    "rule": rule,
                    "n_audits": len(out),
                    "unknown_platform_rate": round(sum(not o.match for o in out) / len(out), 5),
                    "false_match_rate": round(sum(o.match for o in out) / len(out), 5),
                }
            )
    for model in MODELS:
        for tier in TIERS:
            old, new = (
                pick(kind="known", model=model, tier=str(tier), rule="old"),
                pick(kind="known", model=model, tier=str(tier), rule="new"),
            )
            if not old or not new:
                continue
            result["known_classes"].append(
                {
                    "model": model,
                    "tier": str(tier),
                    "n_audits": len(new),
                    "median_queries_old": float(np.median([o.queries for o in old])),
                    "median_queries_new": float(np.median([o.queries for o in new])),
                    "match_rate_old": round(sum(o.match for o in old) / len(old), 4),
                    "match_rate_new": round(sum(o.match for o in new) / len(new), 4),
                }
            )
    # per head, at the default: how often a report states its value as decided (its own bound met, or the
    # class's), and how often wrongly, where the target's true labels are known (a near twin's hardware is
    # another vendor's or another ISA's; its dtype usually the same as its twin's)
    result["heads"], totals = [], {}
    for group, kinds in (("near-twins", twins), ("known", ("known",)), ("unseen-engines", ("engine",))):
        for model in MODELS:
            for tier in TIERS:
                rs = [
                    r
                    for r in rows
                    if r["kind"] in kinds and r["model"] == model and r["tier"] == str(tier) and r["rule"] == "new"
                ]
                for head in sorted({h for r in rs for h in (*r["truth"], *r.get("decided", {}))}):
                    decided = [r for r in rs if head in r.get("decided", {})]
                    # a class's label joins its members' values with "|" where they differ: any of them is right
                    wrong = [
                        r
                        for r in decided
                        if r["truth"]
                        and r["decided"][head] != r["truth"].get(head)
                        and r["decided"][head] not in str(r["truth"].get(head, "")).split("|")
                    ]
                    result["heads"].append(
                        {
                            "group": group,
                            "model": model,
                            "tier": str(tier),
                            "head": head,
                            "n_audits": len(rs),
                            "decided": len(decided),
                            "wrongly_decided": len(wrong),
                            "median_queries_when_decided": float(np.median([r["queries"] for r in decided]))
                            if decided
                            else None,
                        }
                    )
                    t = totals.setdefault((group, head), [0, 0, 0])
                    t[0], t[1], t[2] = t[0] + len(rs), t[1] + len(decided), t[2] + len(wrong)
    result["heads_overall"] = [
        {
            "group": group,
            "head": head,
            "n_audits": n,
            "decided_rate": round(d / n, 5),
            "wrong_decision_rate": round(w / n, 5),
            "wrong_decisions": w,
            "wrong_decision_ci": clopper_pearson(w, n),
        }
        for (group, head), (n, d, w) in sorted(totals.items())
        if n
    ]
    # open-set AUROC per left-out class at the default: score = the audit's final log e-value (-inf: every
    # candidate parted), known-class audits (all classes present) against the left-out class's audits
    from sklearn.metrics import roc_auc_score

    def score(r: dict) -> float:
        return -1e9 if r["log_e"] is None else float(r["log_e"])

    result["open_set_auroc"] = []
    for model in MODELS:
        for tier in TIERS:
            inside = [
                score(r)
                for r in rows
                if (r["kind"], r["model"], r["tier"], r["rule"]) == ("known", model, str(tier), "new")
            ]
            held = sorted(
                {r["target"] for r in rows if (r["kind"], r["model"], r["tier"]) == ("leave-one-out", model, str(tier))}
            )
            for name in held:
                outside = [
                    score(r)
                    for r in rows
                    if (r["kind"], r["model"], r["tier"], r["target"], r["rule"])
                    == ("leave-one-out", model, str(tier), name, "new")
                ]
                if not inside or not outside:
                    continue
                labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
                result["open_set_auroc"].append(
                    {
                        "model": model,
                        "tier": str(tier),
                        "held_out_class": name,
                        "auroc": round(float(roc_auc_score(labels, np.r_[inside, outside])), 4),
                        "n_known": len(inside),
                        "n_held_out": len(outside),
                    }
                )
    stops: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["rule"] == "new":
            stops.setdefault(r["kind"], {}).setdefault(r["stop"], 0)
            stops[r["kind"]][r["stop"]] += 1
    result["stops_new_rule"] = stops
    result["open_set_below_0_95"] = parting_probes(result["open_set_auroc"])
    result["answers_needed"] = answers_needed()
    # the worst held-out targets under the new rule
    worst: dict[tuple, list[bool]] = {}
    for r in rows:
        if r["kind"] in twins and r["rule"] == "new":
            worst.setdefault((r["kind"], r["model"], r["tier"], r["target"], r.get("nearest_agreement")), []).append(
                r["match"]
            )
    result["false_matched_targets"] = [
        {
            "kind": k[0],
            "model": k[1],
            "tier": k[2],
            "target": k[3],
            "nearest_agreement": k[4],
            "matches": sum(v),
            "audits": len(v),
        }
        for k, v in sorted(worst.items())
        if any(v)
    ]
    result["false_matches_vs_known_twins"] = partings_vs_known_twins(result["false_matched_targets"])
    result["audits"] = rows
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verdicts.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    plot(result, RESULTS / "verdicts.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("audits", "by_split")}, indent=1))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    splits = [r for r in result["by_split"]]
    labels = sorted({(r["kind"].split("-")[0], r["model"], r["tier"]) for r in splits})
    x = np.arange(len(labels))
    for i, rule in enumerate(("old", "new")):
        vals = []
        for lab in labels:
            match = [r for r in splits if (r["kind"].split("-")[0], r["model"], r["tier"]) == lab and r["rule"] == rule]
            vals.append(match[0]["false_match_rate"] if match else math.nan)
        ax1.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=f"{rule} rule")
    ax1.axhline(result["alpha"], color="k", ls="--", lw=0.8, label="α")
    ax1.set_xticks(x, ["/".join(lab) for lab in labels], rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("false-match rate (near twins)")
    ax1.legend(fontsize=8)
    known = result["known_classes"]
    xk = np.arange(len(known))
    ax2.bar(xk - 0.2, [r["median_queries_old"] for r in known], 0.4, label="old rule")
    ax2.bar(xk + 0.2, [r["median_queries_new"] for r in known], 0.4, label="new rule (the default)")
    for x, r in zip(xk, known, strict=True):  # a short audit that matched nothing is not cheap: say so
        ax2.annotate(f"{r['match_rate_new']:.0%} matched", (x + 0.2, r["median_queries_new"]), ha="center", fontsize=7)
    ax2.set_xticks(xk, [f"{r['model']}/{r['tier']}" for r in known], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("median queries, known classes")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
