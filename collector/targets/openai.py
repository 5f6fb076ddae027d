"""`OpenAICompatibleTarget`: a black-box endpoint speaking `/v1/completions` or `/v1/chat/completions`.

It sends pool probes as prompts (the reference vocabulary makes text and token ids a bijection),
asks for one greedy token with as many `top_logprobs` as the endpoint gives, and reads back the
first token.  Every request sent counts against a hard `QueryBudget` (retries included: a provider
bills them), responses are read with a size cap and an overall deadline, and 429/5xx/timeouts are
retried with backoff (`Retry-After` honoured): see `BudgetedHTTPClient`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import httpx
import numpy as np

from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import MAX_RESPONSE_BYTES, BudgetedHTTPClient, QueryBudget
from hspi.collector.targets.openai_parse import FirstToken, parse_chat_completion, parse_completion
from hspi.collector.vocabulary import decode, token_id
from hspi.errors import ConfigError, TargetError
from hspi.responses import TierAnswers
from hspi.terms import TIER_WIDTH, TOP_LOGPROBS, Tier

TIER_K = {t.value: k for t, k in TIER_WIDTH.items() if k is not None}


class OpenAICompatibleTarget(Target):
    kind: ClassVar[str] = "openai-compatible"
    tier: ClassVar[str] = "topk20"

    def __init__(
        self,
        base_url: str,
        model: str,
        budget: QueryBudget,
        *,
        served_model: str | None = None,
        api: Literal["completions", "chat"] = "completions",
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint {base_url!r} is not an http(s) URL")
        if api not in ("completions", "chat"):
            raise ConfigError(f"unknown api {api!r}; allowed: completions, chat")
        self.spec = model_spec(model)
        if self.spec.input_kind != "tokens":
            raise ConfigError(f"model {model} takes {self.spec.input_kind}s, not prompts: use a JSON logits target")
        self.base_url, self.model, self.budget = base_url.rstrip("/"), model, budget
        self.served_model, self.api = served_model or model, api
        self.http = BudgetedHTTPClient(
            self.base_url,
            budget,
            api_key=api_key,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_response_bytes=max_response_bytes,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    # -- the Target interface ------------------------------------------------------------------
    def ask(self, probes: ProbeSet, probe_id: int, tier: Tier) -> TierAnswers:
        if tier is Tier.LOGITS:
            raise ConfigError("an OpenAI-compatible endpoint shows log-probabilities, not logits: use --api logits")
        token = self.first_token(probes.inputs(np.array([probe_id]))[0], TOP_LOGPROBS[tier])
        return answers_from_tokens(self.model, probes.version, np.array([probe_id]), tier, [token])

    def probe_tier(self, probes: ProbeSet, probe_id: int, most: Tier | None = None) -> tuple[Tier, TierAnswers]:
        if most is Tier.LOGITS:
            raise ConfigError("an OpenAI-compatible endpoint shows log-probabilities, not logits: use --api logits")
        tier, token = self.detect_tier(probes.inputs(np.array([probe_id]))[0], most=most or Tier.TOPK20)
        tier = Tier(tier)
        return tier, answers_from_tokens(self.model, probes.version, np.array([probe_id]), tier, [token])

    # -- one probe ---------------------------------------------------------------------------
    def first_token(self, prompt_ids: np.ndarray, top_logprobs: int | None) -> FirstToken:
        """Send one probe; `top_logprobs` None asks for text only, 0 for the sampled token's logprob."""
        prompt = decode(prompt_ids, self.spec.n_outputs)
        if self.api == "completions":
            payload: dict = {"model": self.served_model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
            if top_logprobs is not None:
                payload["logprobs"] = top_logprobs
            body = self.http.post("/completions", payload, billed=len(prompt_ids) + 1)
            return parse_completion(body)
        payload = {
            "model": self.served_model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        if top_logprobs is not None:
            payload["logprobs"] = True
            if top_logprobs > 0:
                payload["top_logprobs"] = top_logprobs
        return parse_chat_completion(self.http.post("/chat/completions", payload, billed=len(prompt_ids) + 1))

    def detect_tier(self, prompt_ids: np.ndarray, most: str = "topk20") -> tuple[str, FirstToken]:
        """The richest tier the endpoint really gives, and its answer to this (pool) probe.

        Asks for 20 alternatives, then 5, then the sampled token's logprob, then text; a refusal
        (HTTP 4xx) or a shorter list moves down a tier.  Each attempt is a billed query.  `most`
        caps what is asked for (an auditor may choose to audit at a lower tier).
        """
        asks: tuple[int | None, ...] = {
            "topk20": (20, 5, 0, None),
            "topk5": (5, 0, None),
            "top1": (0, None),
            "text": (None,),
        }[most]
        for ask in asks:
            try:
                answer = self.first_token(prompt_ids, ask)
            except TargetError as exc:
                # a refusal (4xx answered at once) moves down; a 429 that outlasted the retries is no refusal
                if " answered HTTP 4" in str(exc) and ask is not None:
                    continue
                raise
            if answer.top is not None and len(answer.top) > 5:
                return "topk20", answer
            if answer.top is not None and len(answer.top) > 1:
                return "topk5", answer
            if answer.logprob is not None or (answer.top is not None and len(answer.top) == 1):
                return "top1", answer
            if answer.text is not None:
                return "text", answer
        raise TargetError("target-error: the endpoint generated no token for a probe, at any tier")


def answers_from_tokens(
    model: str, probe_set: str, probe_ids: np.ndarray, tier: str, tokens: list[FirstToken]
) -> TierAnswers:
    """Turn first tokens into a `TierAnswers` at `tier`, mapping texts to ids with the model's vocabulary.

    A text that is no single token of the vocabulary, or an answer with fewer alternatives than the
    tier shows (a server that merged duplicate texts), leaves that row incomplete.
    """
    vocab = model_spec(model).n_outputs
    k = TIER_K[tier]
    ids = np.full((len(tokens), k), -1, dtype=np.int32)
    values = np.full((len(tokens), k), np.nan, dtype=np.float32)
    for row, token in enumerate(tokens):
        if tier == "text" or (tier == "top1" and token.logprob is not None):
            tid = token_id(token.text or "", vocab)
            ids[row, 0] = -1 if tid is None else tid
            if tier == "top1":
                values[row, 0] = token.logprob
            continue
        top = token.top or ([(token.text, token.logprob)] if token.logprob is not None and token.text else [])
        if len(top) < k:
            continue
        mapped = [(token_id(text, vocab), value) for text, value in top]
        if any(tid is None for tid, _ in mapped) or len({tid for tid, _ in mapped}) < len(mapped):
            continue  # a foreign text, or two alternatives with one text: not this vocabulary's answer
        # equal log-probabilities rank the lower id first, as the tiers are derived for references
        mapped = sorted(mapped, key=lambda p: (-float(p[1]), p[0]))[:k]
        ids[row] = [int(tid) for tid, _ in mapped if tid is not None]
        values[row] = [v for _, v in mapped]
    return TierAnswers(model, probe_set, np.asarray(probe_ids, dtype=np.int32), tier, ids, values)
