"""Plots for `hspi evaluate`: a confusion matrix per head, accuracy against queries, open-set AUROC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_plots(result: dict[str, Any], directory: Path, confusions: dict[str, Any] | None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for key, entry in (confusions or {}).items():
        pairs = entry["pairs"]
        labels = sorted({t for t, _ in pairs} | {p for _, p in pairs})
        index = {label: i for i, label in enumerate(labels)}
        matrix = np.zeros((len(labels), len(labels)))
        for truth, predicted in pairs:
            matrix[index[truth], index[predicted]] += 1
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        size = max(5.0, 0.35 * len(labels) + 3)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), [label[:40] for label in labels], rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), [label[:40] for label in labels], fontsize=6)
        ax.set_xlabel("predicted"), ax.set_ylabel("true")
        ax.set_title(f"{key}: logits tier, 1 query", fontsize=9)
        fig.tight_layout()
        path = directory / f"confusion-{key.replace('/', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    rows = result["results"]
    for model in sorted({r["model"] for r in rows}):
        splits = sorted({r["split"] for r in rows if r["model"] == model})
        fig, axes = plt.subplots(len(splits), 4, figsize=(16, 3.2 * len(splits)), squeeze=False)
        for i, split in enumerate(splits):
            for j, tier in enumerate(("logits", "topk20", "topk5", "top1")):
                ax = axes[i][j]
                for head in ("full", "dtype", "hardware"):
                    for method, style in (("lightgbm", "-o"), ("hspi-ld-svm", "--s"), ("exact-match", ":^")):
                        pts = sorted(
                            (r["queries"], r["accuracy"])
                            for r in rows
                            if r["model"] == model
                            and r["split"] == split
                            and r["tier"] == tier
                            and r["head"] == head
                            and r["method"] == method
                        )
                        if pts:
                            ax.plot(*zip(*pts), style, label=f"{head} {method}", markersize=3)
                ax.set_xscale("log", base=2), ax.set_ylim(0, 1.02), ax.set_title(f"{split} / {tier}", fontsize=9)
                ax.set_xlabel("queries")
        if axes[0][0].get_legend_handles_labels()[0]:  # an endpoint-only split has no such lines
            axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{model}: accuracy vs queries")
        fig.tight_layout()
        path = directory / f"accuracy-vs-queries-{model}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if result.get("open_set"):
        written.append(_open_set_plot(result["open_set"], directory))
    return written


def _open_set_plot(rows: list[dict[str, Any]], directory: Path) -> Path:
    """Per method and model: each left-out class's AUROC against the audit size (one dot per class and tier)."""
    models = sorted({r["model"] for r in rows})
    methods = sorted({r.get("method", "lightgbm") for r in rows})
    tiers = ("logits", "topk20", "topk5", "top1")
    fig, axes = plt.subplots(len(methods), len(models), figsize=(5 * len(models), 3.4 * len(methods)), squeeze=False)
    for row, method in enumerate(methods):
        for ax, model in zip(axes[row], models):
            for k, tier in enumerate(tiers):
                pts = [
                    (r.get("queries", 1), r["auroc"])
                    for r in rows
                    if r["model"] == model and r["tier"] == tier and r.get("method", "lightgbm") == method
                ]
                if not pts:
                    continue
                q, auroc = np.array(pts, dtype=float).T
                ax.scatter(q * (1 + 0.08 * (k - 1.5)), auroc, s=9, alpha=0.6, label=tier)  # tiers side by side
            ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
            ax.set_xscale("log", base=2), ax.set_ylim(0.45, 1.02)
            ax.set_xlabel("queries"), ax.set_ylabel("AUROC (class left out)")
            ax.set_title(f"{model}, {method}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("open set: each class in turn unknown to the matcher")
    fig.tight_layout()
    path = directory / "open-set-auroc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
