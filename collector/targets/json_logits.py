"""`JSONLogitsTarget`: a plain "inputs in, logits out" HTTP endpoint (vision-style models).

POST `{"inputs": [input]}` → `{"logits": [[...]]}`.  Inputs cross as JSON numbers: a float32 written
as its float64 value parses back to the same float32, so the endpoint sees the exact probe.
"""

from __future__ import annotations

from typing import ClassVar

import httpx
import numpy as np

from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import BudgetedHTTPClient, QueryBudget
from hspi.collector.targets.openai_parse import load_json
from hspi.errors import TargetError
from hspi.responses import Responses


class JSONLogitsTarget(Target):
    kind: ClassVar[str] = "json-logits"
    tier: ClassVar[str] = "logits"

    def __init__(
        self,
        url: str,
        model: str,
        budget: QueryBudget,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.spec = model_spec(model)
        self.model = model
        self.http = BudgetedHTTPClient(
            url, budget, api_key=api_key, timeout_s=timeout_s, retries=retries, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        rows = []
        for x in probes.inputs(ids):
            payload = {"inputs": [x.tolist()]}
            body = load_json(self.http.post("", payload, billed=int(np.prod(self.spec.input_shape))))
            rows.append(self._logits(body))
        return Responses(self.model, probes.version, np.asarray(ids, dtype=np.int32), np.stack(rows), "float32")

    def _logits(self, body: object) -> np.ndarray:
        logits = body.get("logits") if isinstance(body, dict) else None
        if not isinstance(logits, list) or len(logits) != 1 or not isinstance(logits[0], list):
            raise TargetError("target-error: the response has no 'logits' list with one row")
        row = logits[0]
        if len(row) != self.spec.n_outputs or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in row
        ):
            raise TargetError(f"target-error: expected {self.spec.n_outputs} numeric logits, got {len(row)} values")
        values = np.asarray(row, dtype=np.float64).astype(np.float32)
        if not np.isfinite(values).all():
            raise TargetError("target-error: the logits contain values that are not finite")
        return values
