"""The `text` tier on a dataset: each class's greedy answers, fitting the greedy vote, and its report.

Two probe kinds: `pool` (the reference pool; greedy answers from the stored full outputs, the
`replay` run as the independent repeat) and `border` (the border prompts; the `border` run, and
`border-replay` as the repeat).  The report measures, per model:

- for each pair of classes, on how many pool and border probes their greedy tokens differ, and
  which pairs no probe tells apart at this tier;
- how stable each configuration's greedy answer is between its two independent runs (eps);
- the vote's accuracy per head after 1/4/16/64 queries on held-out answers: two folds over the
  repeated probes; eps and the `unknown` threshold are fitted on one fold, audits use the other
  fold's *repeat* answers, in random order (several seeds) and in information-gain order; labels
  tied at the top of the posterior share the credit (the expected accuracy of a random pick);
- open set: each class left out of the vote in turn and audited: how often it is called unknown.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hspi.classifier.greedy_vote import GreedyVote
from hspi.collector.border_store import BorderStore
from hspi.dataset import Dataset
from hspi.equivalence import EquivalenceClass, equivalence_classes
from hspi.errors import DatasetError
from hspi.features.border import TextAnswers
from hspi.platform import HEADS

KINDS = ("pool", "border")
QUERIES = (1, 4, 16, 64)
PROBE_MODES = {"pool": ("pool",), "border": ("border",), "pool+border": ("pool", "border")}
RANDOM_SEEDS = 10  # random query orders per audited configuration and fold
FOLD_SEED = 23
CALIBRATION_SEEDS = 5  # random audits per known configuration that calibrate `unknown`
SENSITIVITY_FLOOR = 0.001  # a second epsilon floor for the open-set measurement (the default is 0.01)
TIE_TOLERANCE = 1e-9  # posteriors this close are a tie: equal evidence, rounding apart


@dataclass
class TextData:
    model: str
    classes: list[EquivalenceClass]
    class_of: dict[str, int]  # config -> class index
    vocab_size: int
    expected: dict[str, TextAnswers]  # kind -> class 0's answers, for the probe ids every class shares
    greedy: dict[str, np.ndarray]  # kind -> (C, n) expected greedy ids (first member's first run)
    second: dict[str, np.ndarray]  # kind -> (C, n) runner-up ids
    repeat: dict[str, dict[str, TextAnswers]]  # kind -> config -> its independent second run
    first: dict[str, dict[str, TextAnswers]]  # kind -> config -> its first run (restricted to repeat ids)
    probe_sets: dict[str, str]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The probe kinds answered: pool, and border where border prompts were searched."""
        return tuple(self.expected)


def fit_text_vote(dataset: Dataset, model: str, store: BorderStore | None = None) -> GreedyVote:
    """The text-tier vote of `model` fitted on every repeat and calibrated on them (what an audit loads)."""
    return full_vote(load_text_data(dataset, store, model))


def full_vote(data: TextData) -> GreedyVote:
    """The vote fitted on every repeat, its `unknown` calibrated on all of them."""
    vote = fit_vote(data)
    calibrate_vote(vote, data, {k: data.expected[k].probe_ids for k in data.kinds})
    return vote


def load_text_data(dataset: Dataset, store: BorderStore | None, model: str) -> TextData:
    """The text tier's answers of `model`; without a border store (a model no border prompts were searched for,
    e.g. a registered one), pool probes only."""
    classes = equivalence_classes(dataset, model)
    configs = [
        c
        for cls in classes
        for c in cls.members
        if c in dataset.complete_configs(model, ("reference", "replay"))
        and (store is None or c in store.complete_configs(model))
    ]
    classes = [cls for cls in classes if any(m in configs for m in cls.members)]
    if len(classes) < 2:
        what = "border answers" if store is not None else "reference and replay answers"
        raise DatasetError(f"{dataset.directory}: {model} has fewer than two classes with {what}")
    class_of = {c: i for i, cls in enumerate(classes) for c in cls.members if c in configs}
    representatives = [next(m for m in cls.members if m in configs) for cls in classes]
    kinds = KINDS if store is not None else ("pool",)

    def answers(kind: str, config: str, repeat: bool) -> TextAnswers:
        """A configuration's first run of a probe kind, or its independent repeat."""
        if kind == "pool":
            return _pool_answers(dataset, config, "replay" if repeat else "reference", model)
        assert store is not None
        return store.answers(config, "border-replay" if repeat else "border", model)

    expected, greedy, second = {}, {}, {}
    for kind in kinds:
        rows = [answers(kind, c, repeat=False) for c in representatives]
        ids = rows[0].probe_ids
        if any(not np.array_equal(r.probe_ids, ids) for r in rows):
            raise DatasetError(f"{dataset.directory}: {model} {kind} answers of the classes cover other probes")
        expected[kind] = rows[0]
        greedy[kind] = np.stack([r.greedy for r in rows])
        second[kind] = np.stack([r.second for r in rows])
    repeat = {kind: {c: answers(kind, c, repeat=True).sorted() for c in configs} for kind in kinds}
    first = {
        kind: {c: answers(kind, c, repeat=False).select(repeat[kind][c].probe_ids) for c in configs} for kind in kinds
    }
    vocab = int(dataset.responses(representatives[0], "reference", model).native.shape[1])
    probe_sets = {kind: expected[kind].probe_set for kind in kinds}
    return TextData(model, classes, class_of, vocab, expected, greedy, second, repeat, first, probe_sets)


def _pool_answers(dataset: Dataset, config: str, run: str, model: str) -> TextAnswers:
    r = dataset.responses(config, run, model)
    return TextAnswers.from_outputs(r.probe_set, r.probe_ids, r.as_float32())


def fit_vote(
    data: TextData, *, train_ids: dict[str, np.ndarray] | None = None, exclude: int | None = None, **params: Any
) -> GreedyVote:
    """The vote over every class (but `exclude`), eps from the repeats on `train_ids` (default: all)."""
    keep = [i for i in range(len(data.classes)) if i != exclude]
    renumber = {old: new for new, old in enumerate(keep)}
    expected = {k: (data.expected[k].probe_ids, data.greedy[k][keep], data.second[k][keep]) for k in data.kinds}
    repeated = {}
    for kind in data.kinds:
        cls, ids, obs = [], [], []
        for config, answers in data.repeat[kind].items():
            if data.class_of[config] not in renumber:
                continue
            a = answers if train_ids is None else answers.select(np.intersect1d(answers.probe_ids, train_ids[kind]))
            cls.append(np.full(len(a), renumber[data.class_of[config]]))
            ids.append(a.probe_ids)
            obs.append(a.greedy)
        repeated[kind] = (np.concatenate(cls), np.concatenate(ids), np.concatenate(obs))
    return GreedyVote(**params).fit(
        expected,
        repeated,
        classes=[data.classes[i].name for i in keep],
        labels=[data.classes[i].labels for i in keep],
        vocab_size=data.vocab_size,
    )


def calibrate_vote(
    vote: GreedyVote, data: TextData, probe_ids: dict[str, np.ndarray], *, exclude: int | None = None, seed: int = 0
) -> GreedyVote:
    """Set `unknown` from random audits (every budget) of the known configurations' repeat answers."""
    return vote.calibrate(known_scores(vote, data, probe_ids, exclude=exclude, seed=seed))


def known_scores(
    vote: GreedyVote, data: TextData, probe_ids: dict[str, np.ndarray], *, exclude: int | None = None, seed: int = 0
) -> list[float]:
    """Match scores of random audits at every budget of the known configurations' repeat answers."""
    rng = np.random.default_rng(seed)
    scores = []
    for config in data.repeat["pool"]:
        if data.class_of[config] == exclude:
            continue
        queue = _queue(data, config, probe_ids, data.kinds)
        ll, unk = _query_scores(vote, queue)
        for _ in range(CALIBRATION_SEEDS):
            order = rng.permutation(len(queue))
            cum, cum_unk = np.cumsum(ll[order], axis=0), np.cumsum(unk[order])
            for q in QUERIES:
                if q <= len(queue):
                    scores.append(float((cum[q - 1].max() - cum_unk[q - 1]) / q))
    return scores


def _queue(
    data: TextData, config: str, probe_ids: dict[str, np.ndarray], kinds: tuple[str, ...]
) -> list[tuple[str, int, int]]:
    """The audited answers on offer: (kind, probe id, observed greedy id) from the config's repeat run."""
    out = []
    for kind in kinds:
        answers = data.repeat[kind][config]
        a = answers.select(np.intersect1d(answers.probe_ids, probe_ids[kind]))
        out += [(kind, int(i), int(g)) for i, g in zip(a.probe_ids, a.greedy)]
    return out


def _query_scores(vote: GreedyVote, queue: list[tuple[str, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    ll = np.zeros((len(queue), len(vote.classes_)))
    unk = np.zeros(len(queue))
    for kind in {k for k, _, _ in queue}:
        rows = np.array([i for i, q in enumerate(queue) if q[0] == kind])
        ids = np.array([queue[i][1] for i in rows])
        obs = np.array([queue[i][2] for i in rows])
        ll[rows] = vote.log_likelihood(kind, ids, obs)
        unk[rows] = vote.unknown_log_likelihood(kind, ids, obs)
    return ll, unk


def info_gain_order(vote: GreedyVote, queue: list[tuple[str, int, int]], ll: np.ndarray, steps: int) -> list[int]:
    """The sequential audit: at each step the queued probe of highest expected information gain
    under the posterior so far (ties to the earlier entry), then its answer updates the posterior."""
    kinds = sorted({k for k, _, _ in queue})
    columns = {k: vote._columns(k, [q[1] for q in queue if q[0] == k]) for k in kinds}
    rows = {k: np.array([i for i, q in enumerate(queue) if q[0] == k]) for k in kinds}
    used = np.zeros(len(queue), dtype=bool)
    total = np.zeros(len(vote.classes_))
    order = []
    for _ in range(min(steps, len(queue))):
        post = vote.posterior_from(total)
        gain = np.full(len(queue), -np.inf)
        for k in kinds:
            gain[rows[k]] = vote.information_gain(post, k)[columns[k]]
        gain[used] = -np.inf
        pick = int(np.argmax(gain))
        used[pick] = True
        order.append(pick)
        total = total + ll[pick]
    return order


def _folds(data: TextData) -> list[dict[str, np.ndarray]]:
    """Two disjoint halves of the repeated probe ids per kind (seeded)."""
    rng = np.random.default_rng(FOLD_SEED)
    halves: list[dict[str, np.ndarray]] = [{}, {}]
    for kind in KINDS:
        ids = np.unique(np.concatenate([a.probe_ids for a in data.repeat[kind].values()]))
        perm = rng.permutation(ids)
        halves[0][kind], halves[1][kind] = np.sort(perm[: len(ids) // 2]), np.sort(perm[len(ids) // 2 :])
    return halves


def pair_table(data: TextData) -> list[dict[str, Any]]:
    rows = []
    for a, b in itertools.combinations(range(len(data.classes)), 2):
        counts = {k: int((data.greedy[k][a] != data.greedy[k][b]).sum()) for k in KINDS}
        rows.append(
            {
                "a": data.classes[a].name,
                "b": data.classes[b].name,
                **counts,
                "dtype": f"{data.classes[a].labels['dtype']} / {data.classes[b].labels['dtype']}",
            }
        )
    return rows


def text_tier_groups(data: TextData) -> list[list[str]]:
    """Classes whose greedy answers are identical on every pool and border probe (size > 1 only)."""
    keys: dict[bytes, list[str]] = {}
    for i, cls in enumerate(data.classes):
        keys.setdefault(b"".join(data.greedy[k][i].astype("<i4").tobytes() for k in KINDS), []).append(cls.name)
    return [group for group in keys.values() if len(group) > 1]


def stability(data: TextData) -> dict[str, Any]:
    per_config = {}
    for config in data.repeat["pool"]:
        per_config[config] = {
            k: {
                "disagreements": int((data.first[k][config].greedy != data.repeat[k][config].greedy).sum()),
                "repeats": len(data.repeat[k][config]),
            }
            for k in KINDS
        }
    members_agree = all(
        np.array_equal(data.first[k][c].greedy, data.first[k][m].greedy)
        for k in KINDS
        for cls in data.classes
        for c in cls.members
        for m in cls.members
        if c in data.class_of and m in data.class_of
    )
    return {"per_config": per_config, "class_members_agree": members_agree}


def evaluate_model(
    data: TextData,
    *,
    seeds: int = RANDOM_SEEDS,
    open_set: bool = True,
    log: Callable[[str], None] = lambda _: None,
    **params: Any,
) -> dict[str, Any]:
    """Accuracy per probe kinds x order x head x budget, and open-set rates; `params` go to `GreedyVote`."""
    folds = _folds(data)
    hits: dict[tuple, list[float]] = {}
    unknown_known: dict[tuple, list[float]] = {}
    unknown_hidden: dict[tuple, list[float]] = {}
    thresholds = []
    for fold in (0, 1):
        train, test = folds[1 - fold], folds[fold]
        vote = calibrate_vote(fit_vote(data, train_ids=train, **params), data, train, seed=fold)
        thresholds.append(vote.threshold_)
        for mode, kinds in PROBE_MODES.items():
            for number, config in enumerate(data.repeat["pool"]):
                truth = data.classes[data.class_of[config]].labels
                queue = _queue(data, config, test, kinds)
                ll, unk = _query_scores(vote, queue)
                for order_name, orders in _orders(vote, queue, ll, seeds, [fold, number]):
                    for order in orders:
                        for q, post, score in _at_budgets(ll, unk, order):
                            for head, (values, p) in vote.head_posteriors(post).items():
                                hits.setdefault((mode, order_name, head, q), []).append(
                                    tie_credit(values, p, truth[head])
                                )
                            unknown_known.setdefault((mode, order_name, q), []).append(score < vote.threshold_)
        if open_set:
            log(f"{data.model}: open set, fold {fold + 1}/2")
            for hidden in range(len(data.classes)):
                held = calibrate_vote(
                    fit_vote(data, train_ids=train, exclude=hidden, **params), data, train, exclude=hidden, seed=fold
                )
                for config in [c for c, i in data.class_of.items() if i == hidden]:
                    queue = _queue(data, config, test, PROBE_MODES["pool+border"])
                    ll, unk = _query_scores(held, queue)
                    for order_name, orders in _orders(held, queue, ll, seeds, [fold, hidden, 7]):
                        for order in orders:
                            for q, _, score in _at_budgets(ll, unk, order):
                                unknown_hidden.setdefault((order_name, q), []).append(score < held.threshold_)
    accuracy = [
        {"probes": m, "order": o, "head": h, "queries": q, "accuracy": round(float(np.mean(v)), 4), "n": len(v)}
        for (m, o, h, q), v in sorted(
            hits.items(), key=lambda kv: (kv[0][0], kv[0][1], HEADS.index(kv[0][2]), kv[0][3])
        )
    ]
    open_rows = [
        {
            "order": o,
            "queries": q,
            "hidden_called_unknown": round(float(np.mean(v)), 4),
            "n_hidden": len(v),
            "known_called_unknown": round(float(np.mean(unknown_known[("pool+border", o, q)])), 4),
        }
        for (o, q), v in sorted(unknown_hidden.items())
    ]
    return {"accuracy": accuracy, "open_set": open_rows, "thresholds": [round(t, 4) for t in thresholds]}


def tie_credit(values: list[str], posterior: np.ndarray, truth: str) -> float:
    """1 for a right prediction, 0 for a wrong one; labels tied at the top (classes the answers so
    far cannot tell apart) share the credit, as a random pick among them would on average."""
    tied = np.flatnonzero(posterior >= posterior.max() * (1.0 - TIE_TOLERANCE))
    return sum(values[i] == truth for i in tied) / len(tied)


def _orders(
    vote: GreedyVote, queue: list, ll: np.ndarray, seeds: int, seed: list[int]
) -> list[tuple[str, list[list[int]]]]:
    rng = np.random.default_rng(seed)
    return [
        ("random", [list(rng.permutation(len(queue))) for _ in range(seeds)]),
        ("info-gain", [info_gain_order(vote, queue, ll, max(QUERIES))]),
    ]


def _at_budgets(ll: np.ndarray, unk: np.ndarray, order: list[int]):
    cum, cum_unk = np.cumsum(ll[order], axis=0), np.cumsum(unk[order])
    for q in QUERIES:
        if q <= len(order):
            yield q, GreedyVote.posterior_from(cum[q - 1]), float((cum[q - 1].max() - cum_unk[q - 1]) / q)


def border_report(
    dataset: Dataset,
    store: BorderStore,
    *,
    models: list[str] | None = None,
    seeds: int = RANDOM_SEEDS,
    open_set: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], dict[str, GreedyVote]]:
    """The report (JSON-ready) and, per model, the vote fitted on every repeat (calibrated by folds)."""
    started = time.perf_counter()
    out: dict[str, Any] = {
        "dataset": dataset.manifest.name,
        "queries": list(QUERIES),
        "random_seeds": seeds,
        "models": {},
    }
    votes = {}
    for model in models or store.models:
        log(f"{model}: loading answers")
        data = load_text_data(dataset, store, model)
        pairs = pair_table(data)
        sel = store.selection.models[model]
        full = full_vote(data)
        votes[model] = full
        log(f"{model}: evaluating the greedy vote")
        evaluation = evaluate_model(data, seeds=seeds, open_set=open_set, log=log)
        if open_set:  # how much "unknown" depends on the noise a known platform is allowed
            log(f"{model}: open set again with epsilon_floor={SENSITIVITY_FLOOR}")
            evaluation[f"open_set_epsilon_floor_{SENSITIVITY_FLOOR}"] = evaluate_model(
                data, seeds=seeds, open_set=True, epsilon_floor=SENSITIVITY_FLOOR
            )["open_set"]
        n_pairs = len(pairs)
        out["models"][model] = {
            "n_classes": len(data.classes),
            "n_configs": len(data.class_of),
            "probe_sets": data.probe_sets,
            "border_selection": {
                "n": len(sel.ids),
                "scanned": sel.scanned,
                "bases": sel.bases,
                "method": sel.method,
                "margin_quantiles": _quantiles(sel.margin),
                "relative_margin_quantiles": _quantiles(sel.relative_margin),
            },
            "probes_with_any_disagreement": {
                k: int((data.greedy[k] != data.greedy[k][:1]).any(axis=0).sum()) for k in KINDS
            },
            "pairs": {
                "total": n_pairs,
                "told_apart_by_pool": sum(p["pool"] > 0 for p in pairs),
                "told_apart_by_border": sum(p["border"] > 0 for p in pairs),
                "told_apart_by_either": sum(p["pool"] + p["border"] > 0 for p in pairs),
                "indistinguishable": [[p["a"], p["b"]] for p in pairs if p["pool"] + p["border"] == 0],
                "text_tier_groups": text_tier_groups(data),
                "indistinguishable_without_border": sum(p["pool"] == 0 for p in pairs),
                "median_border_prompts_per_pair": float(np.median([p["border"] for p in pairs])),
                "per_pair": pairs,
            },
            "epsilon": {
                "floor": full.epsilon_floor,
                "min": float(full.epsilon_.min()),
                "max": float(full.epsilon_.max()),
                "per_class": {
                    c: {"epsilon": float(e), "disagreements": int(d), "repeats": int(r)}
                    for c, e, d, r in zip(full.classes_, full.epsilon_, full.disagreements_, full.repeats_)
                },
            },
            "stability": stability(data),
            "border_agrees_with_float64": _oracle_agreement(data, sel),
            "unknown_threshold": full.threshold_,
            **evaluation,
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out, votes


def _oracle_agreement(data: TextData, selection: Any) -> dict[str, float]:
    """Per class, the share of border prompts whose greedy token is the float64 oracle's."""
    oracle = dict(zip(selection.ids, selection.greedy))
    truth = np.array([oracle[int(i)] for i in data.expected["border"].probe_ids])
    return {cls.name: round(float((data.greedy["border"][i] == truth).mean()), 4) for i, cls in enumerate(data.classes)}


def _quantiles(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {q: float(np.quantile(v, p)) for q, p in (("min", 0), ("median", 0.5), ("p90", 0.9), ("max", 1))}
