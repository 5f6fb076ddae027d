"""The HTML report of a scan: one self-contained file (plots embedded as PNG), readable offline.

It has the counts, a plot per head (each target's leading guess and its probability, coloured by the
claim's verdict for that head) and the table of every target; a model-agnostic target shows its checks
(logit precision, determinism, engine) where a reference audit shows its platform.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path
from typing import Any

from hspi.files import write_text_atomic
from hspi.platform import HEADS

VERDICT_COLOURS = {"consistent": "#2e7d32", "inconsistent": "#c62828", "inconclusive": "#9e9e9e", None: "#1565c0"}
MAX_ROWS_PER_PLOT = 80  # beyond this a plot shows the first ones and says so


def finding(result: dict[str, Any]) -> str:
    """What a target's audit found, in a table cell: the leading full platform, or the model-agnostic checks."""
    if result.get("kind") == "model-agnostic":
        checks = result.get("checks") or {}
        return ", ".join(f"{name} {c['verdict']} ({c['probability']:.0%})" for name, c in checks.items()) or "-"
    full = (result.get("heads") or {}).get("full")
    platform = f"{full['guess']} ({full['probability']:.0%})" if full else "-"
    # the reference audit's model-agnostic section, where a check reads more than unknown
    known = {name: c for name, c in (result.get("checks") or {}).items() if c.get("verdict") not in (None, "unknown")}
    if known:
        platform += "; " + ", ".join(f"{name} {c['verdict']} ({c['probability']:.0%})" for name, c in known.items())
    return platform


def head_plot(results: list[dict[str, Any]], head: str) -> str | None:
    """A PNG (base64) of each target's leading guess for `head`; None if no target has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if head in (r.get("heads") or {})][:MAX_ROWS_PER_PLOT]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.28 * len(rows)))
    probabilities = [r["heads"][head]["probability"] for r in rows]
    colours = [VERDICT_COLOURS.get(r["heads"][head].get("verdict"), "#1565c0") for r in rows]
    y = range(len(rows))
    ax.barh(list(y), probabilities, color=colours)
    for i, r in enumerate(rows):
        ax.text(0.01, i, r["heads"][head]["guess"], va="center", ha="left", fontsize=7, color="white")
    ax.set_yticks(list(y))
    ax.set_yticklabels([r["target"][:40] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"probability of the leading {head} guess")
    ax.set_title(
        f"{head}: leading guess per target (green consistent, red inconsistent, grey inconclusive, blue no claim)",
        fontsize=8,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_html(results: list[dict[str, Any]], path: Path, *, title: str) -> None:
    status = Counter(r["status"] for r in results)
    verdicts = Counter(r.get("verdict") or "-" for r in results)
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}"
        ".consistent{color:#2e7d32}.inconsistent{color:#c62828}.failed{color:#c62828}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(results)} targets: "
        + ", ".join(f"{n} {e(s)}" for s, n in sorted(status.items()))
        + "; verdicts: "
        + ", ".join(f"{n} {e(v)}" for v, n in sorted(verdicts.items()))
        + "</p>",
    ]
    for head in HEADS:
        png = head_plot(results, head)
        if png:
            parts.append(f"<h2>{e(head)}</h2><img alt='{e(head)} per target' src='data:image/png;base64,{png}'>")
    parts.append(
        "<h2>Targets</h2><table><tr><th>target</th><th>endpoint</th><th>claim</th><th>status</th>"
        "<th>verdict</th><th>platform (full), or model-agnostic checks</th><th>queries</th><th>stopped</th></tr>"
    )
    for r in results:
        guess = finding(r)
        claim = ",".join(f"{k}={v}" for k, v in (r.get("claim") or {}).items())
        parts.append(
            f"<tr><td>{e(r['target'])}</td><td>{e(r['endpoint'])}</td><td>{e(claim)}</td>"
            f"<td class='{e(r['status'])}'>{e(r['status'])}</td>"
            f"<td class='{e(r.get('verdict') or '')}'>{e(r.get('verdict') or '-')}</td><td>{e(guess)}</td>"
            f"<td>{r.get('queries', 0)}/{r.get('budget_queries', 0)}</td>"
            f"<td>{e(r.get('stop') or '')}: {e(r.get('reason') or '')}</td></tr>"
        )
    parts.append("</table></body></html>")
    write_text_atomic(path, "\n".join(parts))
