"""The float64 recomputation an auditor can make of a reference model's outputs (weights known)."""

from __future__ import annotations

import numpy as np

from hspi.collector.models import build_model
from hspi.collector.probes import ProbeSet


def float64_outputs(probes: ProbeSet, ids: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    module = build_model(probes.spec.name, attention="manual").double()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch):
            x = torch.from_numpy(probes.inputs(ids[start : start + batch]))
            chunks.append(module(x.double() if x.is_floating_point() else x).numpy())
    return np.concatenate(chunks)
