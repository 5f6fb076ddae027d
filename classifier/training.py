"""`hspi train`: fit the shipped heads on every replayed pool probe of a dataset and save them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from hspi.classifier.artifacts import save
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.classifier.training_data import load_model_data, pair_features, split_replay
from hspi.dataset import Dataset
from hspi.features.tiers import TIERS, check_tier, reference_values
from hspi.platform import HEADS
from hspi.terms import Tier


def train(
    dataset: Dataset,
    out: Path,
    *,
    tiers: list[str] | None = None,
    models: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    """The matcher of every tier in `tiers` (default: every logit and logprob tier, and the text tier's vote for
    models without border prompts), per model of the dataset (or `models`); the directories written."""
    written = []
    text = tiers is None or Tier.TEXT.value in tiers
    matcher_tiers = [t for t in tiers if t != Tier.TEXT.value] if tiers is not None else list(TIERS)
    for model in models or dataset.models:
        if text:
            written += _train_text_vote(dataset, out, model, explicit=tiers is not None, log=log)
        data = load_model_data(dataset, model)
        train_rows, calib_rows, test_rows = split_replay(len(data.replay_ids))
        # the shipped heads learn from every replayed probe except those that calibrate "unknown"
        fit_rows = np.sort(np.r_[train_rows, test_rows])
        candidates = list(range(len(data.classes)))
        cand_labels = [c.labels for c in data.classes]
        for tier in matcher_tiers:
            check_tier(tier)
            log(f"training {model} / {tier}")
            ref_full = {c: reference_values(data.reference[c], tier, data.classes[c].convention) for c in candidates}
            X, same = [], []
            calib_scores = []
            feats = {
                cid: pair_features(data, tier, cid, np.arange(len(data.replay_ids)), candidates, ref_full)
                for cid in data.replay
            }
            for cid, f in feats.items():
                X.append(f[fit_rows].reshape(-1, f.shape[2]))
                # (rows, heads): whether this config and each candidate share each head's label
                agree = [[data.config_labels[cid][h] == cl[h] for h in HEADS] for cl in cand_labels]
                same.append(np.tile(np.asarray(agree, dtype=bool), (len(fit_rows), 1)))
            matcher = ReferenceMatcher(heads=HEADS).fit(np.concatenate(X), np.concatenate(same))
            for f in feats.values():
                p = matcher.pair_probabilities(f[calib_rows])["full"]
                calib_scores.append(ReferenceMatcher.match_scores(p, np.arange(len(calib_rows))))
            calibrated = CalibratedMatcher(matcher).fit(np.concatenate(calib_scores))
            directory = out / model / tier
            save(
                directory,
                calibrated,
                {
                    "dataset": dataset.manifest.name,
                    "model": model,
                    "tier": tier,
                    "classes": {c.name: list(c.members) for c in data.classes},
                },
            )
            written.append(directory)
    return written


def _train_text_vote(
    dataset: Dataset, out: Path, model: str, *, explicit: bool, log: Callable[[str], None]
) -> list[Path]:
    """The text tier's greedy vote: on pool and border answers where border prompts were collected, else on pool
    answers alone (a registered model, for which no border prompts are searched).  Where border answers exist the
    vote is `hspi border report`'s to fit (with its evaluation): a default run leaves it alone."""
    from hspi.classifier.greedy_vote import text_vote_path
    from hspi.classifier.text_tier import fit_text_vote
    from hspi.collector.border_store import BorderStore, border_dir

    directory = border_dir(dataset.directory)
    store = BorderStore(directory) if directory.is_dir() else None
    if store is not None and model not in store.models:
        store = None
    if store is not None and not explicit:
        return []
    log(f"training {model} / text ({'pool and border' if store is not None else 'pool'} probes)")
    vote = fit_text_vote(dataset, model, store)
    path = vote.save(
        text_vote_path(out, model),
        {"dataset": dataset.manifest.name, "model": model, "tier": "text", "kinds": sorted(vote.probe_ids_)},
    )
    return [path.parent]
