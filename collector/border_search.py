"""Search the border stream of a reference model for border prompts: its closest top-2 ties.

Two searches, one per input kind, both ending with the float64 recomputation (the oracle) of the
very inputs `ProbeSet.inputs` regenerates, so every stored margin is the margin of the stored id:

- token models (`lm-small`): the last-token lattice.  For each seeded prefix, all `vocab` last
  tokens are scored at once in float32 with the prefix's keys and values computed once (a
  hand-written pass over the module's own layers, exact up to float32 rounding), a shortlist of
  the smallest relative margins is kept, and the oracle ranks the shortlist.
- vector and image models (`mlp`, `cnn`): arc bisection.  Each arc is scanned at 2^COARSE_BITS
  points in float32; wherever the float64 winner changes between neighbours, bisection on the
  2^21-point lattice walks to the two adjacent points that straddle the tie, and the one with the
  smaller margin is the candidate.  Ties come out near the float32 input resolution, far below
  what a random scan of the same cost reaches.

The N candidates with the smallest float64 relative margins are the model's border prompts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hspi.collector.models import build_model, model_spec
from hspi.collector.probes import ARC_STEP_BITS, BORDER_STREAM_SIZE, ProbeSet
from hspi.errors import ConfigError
from hspi.features.border import bf16_spacing, greedy_top2, relative_margin, select_smallest
from hspi.provenance import library_versions

DEFAULT_N = 512  # border prompts per model: enough for 64-query audits on half of them
DEFAULT_PREFIXES = 65536  # token models: 65536 prefixes x 512 last tokens = 33.5M candidates (~25 min, 2 cores)
DEFAULT_ARCS = 2 ** (31 - ARC_STEP_BITS)  # vector/image models: every arc of the int32 range (1024)
COARSE_BITS = 9  # 512 float32 points per arc; winners that change twice between two of them are missed
SHORTLIST_FACTOR = 8  # token models: the oracle re-ranks this many times N float32 candidates
PREFIX_BATCH = 8  # prefixes per float32 pass (8 x 512 rows: the fastest batch measured on 2 cores)
ORACLE_BATCH = 512

Progress = Callable[[int, int], None]  # (done, total) in candidates


def search_border(
    model: str,
    *,
    n: int = DEFAULT_N,
    prefixes: int = DEFAULT_PREFIXES,
    arcs: int = DEFAULT_ARCS,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """The border selection of `model` (fields of `hspi.collector.border_store.BorderSelection`)."""
    spec = model_spec(model)
    if n < 1:
        raise ConfigError(f"border prompts per model must be >= 1, got {n}")
    probes = ProbeSet(spec, "border", BORDER_STREAM_SIZE)
    started = time.perf_counter()
    if spec.input_kind == "tokens":
        if not 1 <= prefixes <= BORDER_STREAM_SIZE // spec.n_outputs:
            raise ConfigError(f"prefixes must lie in 1..{BORDER_STREAM_SIZE // spec.n_outputs}, got {prefixes}")
        candidates, scanned = _scan_prefixes(probes, prefixes, SHORTLIST_FACTOR * n, on_progress)
        method, bases = (
            "last-token lattice: float32 scan with cached prefixes, float64 oracle on the shortlist",
            prefixes,
        )
    else:
        if not 1 <= arcs <= DEFAULT_ARCS:
            raise ConfigError(f"arcs must lie in 1..{DEFAULT_ARCS}, got {arcs}")
        lo, hi, scanned = _bisect_arcs(probes, arcs, on_progress)
        method, bases = f"arc bisection: float32 scan at 2^{COARSE_BITS} points per arc, float64 bisection", arcs
        # the two lattice points that straddle a tie are near-copies: keep the closer one only
        closer = relative_margin(_oracle(probes, lo)) <= relative_margin(_oracle(probes, hi))
        candidates = np.unique(np.where(closer, lo, hi))
    outputs = _oracle(probes, candidates)
    greedy, second, margin = greedy_top2(outputs)
    rel = relative_margin(outputs)
    keep = select_smallest(candidates, rel, n)
    return {
        "model": model,
        "probe_set": probes.version,
        "stream_size": BORDER_STREAM_SIZE,
        "method": method,
        "scanned": int(scanned),
        "bases": int(bases),
        "seconds": round(time.perf_counter() - started, 1),
        "ids": [int(i) for i in candidates[keep]],
        "greedy": [int(g) for g in greedy[keep]],
        "second": [int(s) for s in second[keep]],
        "margin": [float(m) for m in margin[keep]],
        "relative_margin": [float(r) for r in rel[keep]],
        "versions": library_versions(),
    }


def _oracle(probes: ProbeSet, ids: np.ndarray) -> np.ndarray:
    from hspi.collector.targets.oracle import float64_outputs

    return float64_outputs(probes, np.asarray(ids, dtype=np.int64), batch=ORACLE_BATCH)


# --- token models: the last-token lattice -------------------------------------------------------------


def last_token_outputs(module: Any, prefixes: np.ndarray) -> Any:
    """(P, T-1) prefixes -> (P, V, V) float32 next-token outputs with every vocabulary token appended.

    Works on `TinyDecoderLM`'s layers (embedding, learned positions, pre-norm blocks, final norm,
    head); the prefix's keys and values are computed once for all V continuations.
    """
    import torch

    p, t1 = prefixes.shape
    vocab = module.embed.weight.shape[0]
    with torch.inference_mode():
        x = module.embed(torch.from_numpy(prefixes)) + module.pos[:t1]
        last = (module.embed.weight + module.pos[t1]).unsqueeze(0).expand(p, vocab, -1).contiguous()
        d = x.shape[-1]
        mask = torch.ones(t1, t1, dtype=torch.bool).triu(1)
        for block in module.blocks:
            heads = block.heads
            dh = d // heads
            q, k, v = block.qkv(block.norm1(x)).view(p, t1, 3, heads, dh).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
            att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
            ql, kl, vl = block.qkv(block.norm1(last)).view(p, vocab, 3, heads, dh).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(
                torch.cat([(ql @ k.transpose(-2, -1)), (ql * kl).sum(-1, keepdim=True)], -1) / math.sqrt(dh), dim=-1
            )
            att_last = weights[..., :-1] @ v + weights[..., -1:] * vl
            x = x + block.proj(att.transpose(1, 2).reshape(p, t1, d))
            x = x + block.mlp(block.norm2(x))
            last = last + block.proj(att_last.transpose(1, 2).reshape(p, vocab, d))
            last = last + block.mlp(block.norm2(last))
        return module.head(module.norm(last))


def _scan_prefixes(
    probes: ProbeSet, n_prefixes: int, shortlist: int, on_progress: Progress | None
) -> tuple[np.ndarray, int]:
    import torch

    vocab = probes.spec.n_outputs
    module = build_model(probes.spec.name, attention="manual")
    if not all(hasattr(module, a) for a in ("embed", "pos", "blocks", "norm", "head")):
        raise ConfigError(f"{probes.spec.name}: the last-token search needs a TinyDecoderLM")
    best_ids, best_scores = np.zeros(0, np.int64), np.zeros(0)
    total = n_prefixes * vocab
    for start in range(0, n_prefixes, PREFIX_BATCH):
        stop = min(start + PREFIX_BATCH, n_prefixes)
        prefixes = np.stack([probes.border_prefix(i) for i in range(start, stop)])
        out = last_token_outputs(module, prefixes).reshape(-1, vocab)
        top = torch.topk(out, 2, dim=1).values.double().numpy()
        scores = (top[:, 0] - top[:, 1]) / bf16_spacing(top[:, 0])
        ids = np.arange(start * vocab, stop * vocab, dtype=np.int64)
        best_ids, best_scores = np.r_[best_ids, ids], np.r_[best_scores, scores]
        if len(best_ids) > shortlist:
            keep = np.argpartition(best_scores, shortlist)[:shortlist]
            best_ids, best_scores = best_ids[keep], best_scores[keep]
        if on_progress:
            on_progress(stop * vocab, total)
    return np.sort(best_ids), total


# --- vector and image models: arc bisection -------------------------------------------------------


def _bisect_arcs(probes: ProbeSet, n_arcs: int, on_progress: Progress | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per tie found: the adjacent lattice ids (lo, hi = lo + 1) whose float64 winners differ."""
    import torch

    module32 = build_model(probes.spec.name)
    module64 = build_model(probes.spec.name).double()
    coarse = 2 ** (ARC_STEP_BITS - COARSE_BITS)
    points = 2**COARSE_BITS

    def winners(module: Any, ids: np.ndarray, dtype: Any) -> np.ndarray:
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(ids), 4096):
                x = torch.from_numpy(probes.inputs(ids[s : s + 4096])).to(dtype)
                chunks.append(torch.argmax(module(x), dim=1).numpy())  # ties to the lower id
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)

    lows = []
    arcs_per_pass = 16
    total = n_arcs * points
    for start in range(0, n_arcs, arcs_per_pass):
        arcs = np.arange(start, min(start + arcs_per_pass, n_arcs), dtype=np.int64)
        ids = ((arcs[:, None] << ARC_STEP_BITS) + np.arange(points, dtype=np.int64)[None, :] * coarse).ravel()
        win = winners(module32, ids, torch.float32).reshape(len(arcs), points)
        change = np.argwhere(win[:, 1:] != win[:, :-1])
        lows.append(ids.reshape(len(arcs), points)[change[:, 0], change[:, 1]])
        if on_progress:
            on_progress(int(arcs[-1] + 1) * points, total)
    lo = np.concatenate(lows) if lows else np.zeros(0, np.int64)
    hi = lo + coarse
    win_lo, win_hi = winners(module64, lo, torch.float64), winners(module64, hi, torch.float64)
    real = win_lo != win_hi  # float32 saw a change that float64 does not: no tie between them
    lo, hi, win_lo = lo[real], hi[real], win_lo[real]
    evaluated = total + 2 * len(real)
    while len(lo) and int((hi - lo).max()) > 1:
        mid = (lo + hi) // 2
        win_mid = winners(module64, mid, torch.float64)
        same = win_mid == win_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        evaluated += len(mid)
    return lo, hi, evaluated
