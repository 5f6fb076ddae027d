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

from hspi.collector.models import CHAT_SUFFIX, is_chat_view, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.prompt_codec import codec_for
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import MAX_RESPONSE_BYTES, BudgetedHTTPClient, QueryBudget
from hspi.collector.targets.openai_parse import FirstToken, parse_chat_completion, parse_completion
from hspi.errors import ConfigError, TargetError
from hspi.responses import AMBIGUOUS_TOKEN, FOREIGN_TOKEN, MISSING_TOKEN, TierAnswers
from hspi.terms import TIER_WIDTH, TOP_LOGPROBS, Tier

# tokens a chat prompt's length may differ by between engines rendering the same template: llama.cpp's
# SentencePiece tokenizer puts a space-prefix token after a special token (a template's BOS) where
# transformers' does not
ENGINE_PROMPT_SLACK = 1
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
        if api == "chat" and self.spec.source == "registered" and not is_chat_view(model):
            raise ConfigError(f"model {model}: its chat requests are matched against {model}{CHAT_SUFFIX}'s references")
        if api == "completions" and is_chat_view(model):
            raise ConfigError(f"model {model}: its references are chat-templated; audit it with --api chat")
        self.codec = codec_for(model)
        self._prompt_tokens: tuple[int | None, int] = (None, 0)  # (the server's usage, the references' count)
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
        prompt = self.codec.decode(prompt_ids)
        billed = len(self.codec.model_input(prompt_ids)) + 1
        if self.api == "completions":
            payload: dict = {"model": self.served_model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
            if top_logprobs is not None:
                payload["logprobs"] = top_logprobs
            return self._settled(parse_completion(self.http.post("/completions", payload, billed=billed)), billed - 1)
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
        return self._settled(
            parse_chat_completion(self.http.post("/chat/completions", payload, billed=billed)), billed - 1
        )

    def _settled(self, token: FirstToken, expected_prompt: int) -> FirstToken:
        """Count what the server says it billed (its `usage`) instead of hspi's estimate, and keep how many prompt
        tokens it says it ran against the count the references ran on."""
        if token.usage is not None and token.usage.total_tokens is not None:
            self.budget.settle(self.http.last_reserved, token.usage.total_tokens)
        self._prompt_tokens = (token.usage.prompt_tokens if token.usage else None, expected_prompt)
        return token

    def prompt_mismatch(self) -> str | None:
        """A chat endpoint whose prompt has another length than the registered chat template renders wraps the
        message in another template (or adds a system prompt): its answers are to another input.  Up to
        ENGINE_PROMPT_SLACK tokens either way are the engine's tokenizer conventions, not another template.
        Completions are not judged on it: a server's BOS is its tokenizer's business, and the billing learns it."""
        reported, expected = self._prompt_tokens
        if self.api != "chat" or reported is None or abs(reported - expected) <= ENGINE_PROMPT_SLACK:
            return None
        return (
            f"the endpoint ran a chat prompt of {reported} tokens where {self.model}'s chat template renders "
            f"{expected}: it wraps messages in another template (or adds a system prompt)"
        )

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

    A text that is no token of the vocabulary (FOREIGN_TOKEN) or several tokens' (AMBIGUOUS_TOKEN) keeps
    its slot and leaves the row incomplete; an answer with fewer alternatives than the tier shows (a
    server that merged duplicate texts) leaves the row missing.
    """
    codec = codec_for(model)
    k = TIER_K[tier]
    ids = np.full((len(tokens), k), MISSING_TOKEN, dtype=np.int32)
    values = np.full((len(tokens), k), np.nan, dtype=np.float32)

    def mapped_id(text: str) -> int:
        if not text:
            return MISSING_TOKEN
        tid = codec.token_id(text)
        if tid is not None:
            return tid
        return AMBIGUOUS_TOKEN if codec.knows(text) else FOREIGN_TOKEN

    for row, token in enumerate(tokens):
        if tier == "text" or (tier == "top1" and token.logprob is not None):
            ids[row, 0] = mapped_id(token.text or "")
            if tier == "top1":
                values[row, 0] = token.logprob
            continue
        top = token.top or ([(token.text, token.logprob)] if token.logprob is not None and token.text else [])
        if len(top) < k:
            continue
        mapped = [(mapped_id(text), value) for text, value in top]
        known = [tid for tid, _ in mapped if tid >= 0]
        if len(set(known)) < len(known):
            continue  # two alternatives with one text: a server that merged them, not this vocabulary's answer
        # equal log-probabilities rank the lower id first, as the tiers are derived for references; an unmapped
        # text stays in its slot (the row is incomplete, and says why)
        mapped = sorted(mapped, key=lambda p: (-float(p[1]), p[0]))[:k]
        ids[row] = [tid for tid, _ in mapped]
        values[row] = [v for _, v in mapped]
    return TierAnswers(model, probe_set, np.asarray(probe_ids, dtype=np.int32), tier, ids, values)
