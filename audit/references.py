"""`ReferenceStore`: what audits are scored against, loaded once and shared.

Per (dataset, model): the platform classes, the reference pool and every class's stored answers to
it, one `ReferenceBook` per tier; per (classifier, model, tier): the matcher; per (classifier,
model): the text-tier vote.  The owner (the CLI command, the service) makes one store and passes it
to every audit; nothing here is module-level state.  Thread-safe: the service's workers share one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hspi.audit.decision import MatchBound, head_closeness
from hspi.classifier.artifacts import load_matcher
from hspi.classifier.batched import BatchedAnswers
from hspi.classifier.greedy_vote import GreedyVote, load_text_vote, text_vote_path
from hspi.classifier.reference import ReferenceMatcher
from hspi.classifier.sequential import ReferenceBook
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.dataset import Dataset
from hspi.equivalence import EquivalenceClass, equivalence_classes
from hspi.errors import ConfigError, DatasetError, ModelError
from hspi.shipped import shipped_classifier, shipped_dataset


@dataclass
class ModelReferences:
    """One model's classes and reference pool in one dataset."""

    dataset_dir: Path
    model: str
    classes: list[EquivalenceClass]
    pool: ProbeSet
    pool_ids: np.ndarray
    logits: list[np.ndarray]  # per class: its stored float32 outputs for every pool probe
    first_tokens: np.ndarray | None  # each pool probe's first token (prefix caches), token models only
    # answers under dynamic batching (`collector.batched_collect`), where the dataset has them
    batched: BatchedAnswers | None = None
    _books: dict[str, ReferenceBook] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, dataset_dir: Path, model: str) -> ModelReferences:
        ds = Dataset(dataset_dir)
        if model not in ds.models:
            raise ConfigError(f"model {model!r} is not in {dataset_dir}; it has: {', '.join(ds.models)}")
        classes = equivalence_classes(ds, model)
        pool_version = next(v for v in ds.manifest.probe_sets[model] if v.endswith("/pool"))
        spec = model_spec(model)
        pool = ProbeSet(spec, "pool", ds.manifest.probe_sets[model][pool_version])
        references = [ds.pool_references(c.members[0], model) for c in classes]
        pool_ids = references[0].probe_ids
        if any(not np.array_equal(r.probe_ids, pool_ids) for r in references):
            raise DatasetError(f"{dataset_dir}: reference runs of {model} cover different pool probes")
        first_tokens = pool.inputs(pool_ids)[:, 0] if spec.input_kind == "tokens" else None
        batched = BatchedAnswers.load(ds, model, classes, pool_ids)
        return cls(
            dataset_dir, model, classes, pool, pool_ids, [r.as_float32() for r in references], first_tokens, batched
        )

    def book(self, tier: str) -> ReferenceBook:
        with self._lock:
            if tier not in self._books:
                self._books[tier] = ReferenceBook(
                    self.logits,
                    [c.labels for c in self.classes],
                    tier,
                    self.pool_ids,
                    batched=self.batched,
                    conventions=[c.convention for c in self.classes],
                )
            return self._books[tier]


class ReferenceStore:
    """Datasets, matchers and text votes, each loaded on first use and kept.

    `dataset` / `classifier` override the shipped locations for every model (the service's
    HSPI_DATASET / HSPI_CLASSIFIER); an audit's own settings may name others.
    """

    def __init__(self, dataset: Path | None = None, classifier: Path | None = None) -> None:
        self.dataset, self.classifier = dataset, classifier
        self._lock = threading.Lock()
        self._references: dict[tuple[Path, str, float], ModelReferences] = {}
        self._matchers: dict[tuple[Path, str, str], ReferenceMatcher] = {}
        self._votes: dict[tuple[Path, str], GreedyVote] = {}

    def dataset_dir(self, model: str, override: Path | None = None) -> Path:
        return Path(override or self.dataset or shipped_dataset(model))

    def classifier_dir(self, model: str, override: Path | None = None) -> Path:
        return Path(override or self.classifier or shipped_classifier(model))

    def has_references(self, model: str, dataset: Path | None = None) -> bool:
        """Whether the dataset an audit would use holds this model (a registered model may have none yet)."""
        directory = self.dataset_dir(model, dataset)
        if not (directory / "dataset.json").is_file():
            return False
        return model in Dataset(directory).models

    def references(self, model: str, dataset: Path | None = None) -> ModelReferences:
        directory = self.dataset_dir(model, dataset)
        key = (directory.resolve(), model, _mtime(directory / "dataset.json"))  # a rewritten dataset reloads
        with self._lock:
            if key not in self._references:
                self._references[key] = ModelReferences.load(directory, model)
            return self._references[key]

    def head_closeness(
        self, model: str, book: ReferenceBook, bound: MatchBound, dataset: Path | None = None
    ) -> dict[str, float]:
        """b per head of `book` (its model's classes at one tier): the closest pair of classes with different
        values of the head, in this book or in any other model's book of the same dataset at that tier.

        Pooled over the models because one model's book can lack the pair that shows how close two values
        come (leave cnn's bf16 torch.compile class out and no two engines of cnn agree on a probe, while
        its eager twin agrees with it on 99.6 %): a platform's closeness to another is a property of the
        platforms more than of the model they run."""
        heads = [h for h in book.labels[0] if h != "full"] if book.labels else []
        heads = [h for h in heads if len({lab[h] for lab in book.labels}) > 1]
        closeness = {h: head_closeness(book.same, [lab[h] for lab in book.labels], bound) for h in heads}
        directory = self.dataset_dir(model, dataset)
        others = [m for m in Dataset(directory).models if m != model] if (directory / "dataset.json").is_file() else []
        for other in others:
            try:
                other_book = self.references(other, dataset).book(book.tier)
            except (ConfigError, DatasetError, ModelError, ValueError):
                continue  # a model this tier cannot show, or not loadable here: it only adds pairs
            for h in heads:
                values = [lab.get(h, "") for lab in other_book.labels]
                if len(set(values)) > 1:
                    closeness[h] = max(closeness[h], head_closeness(other_book.same, values, bound))
        return closeness

    def matcher(self, model: str, tier: str, classifier: Path | None = None) -> ReferenceMatcher:
        root = self.classifier_dir(model, classifier)
        key = (root.resolve(), model, tier)
        with self._lock:
            if key not in self._matchers:
                directory = root / model / tier
                if not (directory / "reference.json").is_file():
                    raise ModelError(f"no classifier for {model} at tier {tier} in {root}")
                self._matchers[key] = load_matcher(directory)[0]
            return self._matchers[key]

    def text_vote(self, model: str, classifier: Path | None = None) -> GreedyVote:
        root = self.classifier_dir(model, classifier)
        key = (root.resolve(), model)
        with self._lock:
            if key not in self._votes:
                if not text_vote_path(root, model).exists():
                    raise ModelError(f"no text-tier vote for {model} in {root}: the endpoint gives text only")
                self._votes[key] = load_text_vote(root, model)
            return self._votes[key]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
