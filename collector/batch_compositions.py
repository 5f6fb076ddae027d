"""Answer probes inside batches of several sizes, as a dynamic batcher forms them.

A server that batches concurrent requests runs a probe with whatever batch-mates arrived with it,
and on CPU and GPU alike another batch size can pick another GEMM blocking, so the same probe gets
another answer.  Each probe is answered once per batch size, at another position per size, beside
the run's other probes, and what is kept is each probe's distinct answers with the sizes that gave
each; a batch-mates check then answers some probes again beside other mates.  What that shows per
configuration (`benchmarks/results/batching.json`, `lm-small`): fp32 through MKL 3 distinct answers
per probe over sizes 1-8, eager bf16 1, and only dynamic int8's answers change with the batch-mates.
"""

from __future__ import annotations

import numpy as np

from hspi.collector.probes import ProbeSet
from hspi.collector.targets.local import LocalTarget
from hspi.errors import ConfigError, TargetError
from hspi.responses import Responses

MAX_BATCH = 64
MATES_CHECKED = 16  # probes answered again in a batch of the largest size beside other batch-mates


def batch_plan(n: int, size: int) -> list[np.ndarray]:
    """Index batches of exactly `size` covering 0..n-1 once each; the list is rotated by `size`, so a
    probe sits at another position for every size, and the last batch is completed with the first
    indices of the rotation (their second answers are not kept)."""
    if not 1 <= size <= MAX_BATCH:
        raise ConfigError(f"batch size {size} is not in 1..{MAX_BATCH}")
    if n == 0:
        return []
    order = np.roll(np.arange(n), -(size % n))
    padded = np.concatenate([order, order[: (-n) % size]]) if n >= size else np.resize(order, size)
    return [padded[i : i + size] for i in range(0, len(padded), size)]


def answer_in_batches(
    target: object, probes: ProbeSet, ids: np.ndarray, sizes: list[int]
) -> tuple[Responses, list[int], dict[str, int]]:
    """Each probe's distinct native answers over batches of `sizes` (rows sorted by probe id, then by
    the first size that gave them), per row a bit mask of the sizes that gave it, and the batch-mates
    check: how many of `MATES_CHECKED` probes, answered again in a batch of the largest size beside
    other batch-mates, changed (dynamic int8 quantisation scales a whole batch by its largest value, so
    there the batch-mates matter, not only the size)."""
    if not isinstance(target, LocalTarget):
        raise ConfigError(f"answers in batches of several sizes run torch or ONNX Runtime targets, not {target!r}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"batch sizes repeat: {sizes}")
    ids = np.sort(np.asarray(ids, dtype=np.int32))
    inputs = probes.inputs(ids)
    if target.spec.source == "registered":  # the ids the model runs on (its BOS, where the tokenizer adds one)
        from hspi.collector.prompt_codec import codec_for

        inputs = codec_for(target.model).model_input(inputs)
    answers: list[np.ndarray] = []  # per size: (n, V) native answers in `ids` order
    for size in sizes:
        got: np.ndarray | None = None
        for batch in batch_plan(len(ids), size):
            out = target.run_inputs(inputs[batch])
            if got is None:
                got = np.empty((len(ids), out.shape[1]), dtype=out.dtype)
            seen = set()
            for position, index in enumerate(batch):
                if int(index) not in seen:  # a repeated index completes the last batch only
                    got[index] = out[position]
                    seen.add(int(index))
        assert got is not None
        answers.append(got)
    mates = (
        batch_mates_check(target, inputs, answers[-1], max(sizes)) if max(sizes) > 1 else {"checked": 0, "changed": 0}
    )
    rows: list[np.ndarray] = []
    masks: list[int] = []
    row_ids: list[int] = []
    for i, probe in enumerate(ids):
        distinct: dict[bytes, int] = {}
        for s, per_size in enumerate(answers):
            key = per_size[i].tobytes()
            if key not in distinct:
                distinct[key] = len(rows)
                rows.append(per_size[i])
                masks.append(0)
                row_ids.append(int(probe))
            masks[distinct[key]] |= 1 << s
    native = np.stack(rows)
    row_ids_array = np.asarray(row_ids, dtype=np.int32)
    responses = Responses(probes.spec.name, probes.version, row_ids_array, native, target.native_dtype)
    if not np.isfinite(responses.as_float32()).all():
        raise TargetError(f"{target.platform.id} produced NaN/Inf outputs on {target.model} in a batch")
    return responses, masks, mates


def batch_mates_check(target: LocalTarget, inputs: np.ndarray, at_largest: np.ndarray, size: int) -> dict[str, int]:
    """Answer the first probes again, each first in a batch of `size` whose other rows are the probes
    from the middle of the run (not the ones it had), and count the answers that changed."""
    n = len(inputs)
    checked = min(MATES_CHECKED, n)
    changed = 0
    others = np.roll(np.arange(n), -(n // 2))
    for i in range(checked):
        mates = [int(j) for j in others if j != i][: size - 1]
        if len(mates) < size - 1:  # fewer probes than the batch: repeat them
            mates = [int(j) for j in np.resize(np.array(mates or [i]), size - 1)]
        out = target.run_inputs(inputs[np.array([i, *mates])])
        changed += int(out[0].tobytes() != at_largest[i].tobytes())
    return {"checked": checked, "changed": changed}
