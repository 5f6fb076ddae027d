"""The plot for `hspi border report`: text-tier accuracy of the greedy vote against queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# what is compared: the pool alone (no border prompts), pool + border prompts in random order, and
# pool + border prompts asked in information-gain order
LineStyle = Literal["solid", "dashed", "dotted"]
METHODS: dict[tuple[str, str], LineStyle] = {
    ("pool", "random"): "dotted",
    ("pool+border", "random"): "dashed",
    ("pool+border", "info-gain"): "solid",
}
HEAD_COLOURS = {"full": "tab:blue", "dtype": "tab:orange", "hardware": "tab:green"}


def write_border_plot(result: dict[str, Any], path: Path) -> Path:
    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = result["models"][model]["accuracy"]
        for (probes, order), style in METHODS.items():
            for head, colour in HEAD_COLOURS.items():
                pts = sorted(
                    (r["queries"], r["accuracy"])
                    for r in rows
                    if r["probes"] == probes and r["order"] == order and r["head"] == head
                )
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=colour, markersize=3, linewidth=1.2)
        pairs = result["models"][model]["pairs"]
        ax.set_title(
            f"{model}: {result['models'][model]['n_classes']} classes, "
            f"{pairs['told_apart_by_either']}/{pairs['total']} pairs told apart",
            fontsize=9,
        )
        ax.set_xscale("log", base=2), ax.set_ylim(0, 1.02), ax.set_xlabel("greedy-token queries")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy on held-out answers")
    handles = [Line2D([], [], color=c, label=f"head: {h}") for h, c in HEAD_COLOURS.items()]
    handles += [Line2D([], [], color="black", linestyle=s, label=f"{p}, {o} order") for (p, o), s in METHODS.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle("text tier (greedy tokens only): greedy vote without and with border prompts", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
