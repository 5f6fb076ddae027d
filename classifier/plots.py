"""Plots for `hspi evaluate`: a confusion matrix per head, accuracy against queries."""

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
                        pts = sorted((r["queries"], r["accuracy"]) for r in rows if r["model"] == model and r["split"] == split
                                     and r["tier"] == tier and r["head"] == head and r["method"] == method)
                        if pts:
                            ax.plot(*zip(*pts), style, label=f"{head} {method}", markersize=3)
                ax.set_xscale("log", base=2), ax.set_ylim(0, 1.02), ax.set_title(f"{split} / {tier}", fontsize=9)
                ax.set_xlabel("queries")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{model}: accuracy vs queries")
        fig.tight_layout()
        path = directory / f"accuracy-vs-queries-{model}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
