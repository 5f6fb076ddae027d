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


def train(
    dataset: Dataset,
    out: Path,
    *,
    tiers: list[str] | None = None,
    models: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    written = []
    for model in models or dataset.models:
        data = load_model_data(dataset, model)
        train_rows, calib_rows, test_rows = split_replay(len(data.replay_ids))
        # the shipped heads learn from every replayed probe except those that calibrate "unknown"
        fit_rows = np.sort(np.r_[train_rows, test_rows])
        candidates = list(range(len(data.classes)))
        cand_labels = [c.labels for c in data.classes]
        for tier in tiers or list(TIERS):
            check_tier(tier)
            log(f"training {model} / {tier}")
            ref_full = {c: reference_values(data.reference[c], tier) for c in candidates}
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
