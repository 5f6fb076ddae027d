"""The reference LMs' vocabulary: text and token ids are a bijection; lm-gpt2 has GPT-2's layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hspi.collector.models import build_model, resolve_models
from hspi.collector.vocabulary import decode, encode, token_id, vocabulary
from hspi.errors import ConfigError


@given(st.lists(st.integers(0, 511), min_size=0, max_size=32))
def test_decode_then_encode_gives_the_ids_back(ids: list[int]) -> None:
    text = decode(ids, 512)
    assert len(text) == len(ids)
    np.testing.assert_array_equal(encode(text, 512), np.asarray(ids, dtype=np.int64))


def test_every_token_is_one_distinct_non_space_character() -> None:
    vocab = vocabulary(512)
    assert len(set(vocab)) == 512 and all(len(t) == 1 and not t.isspace() for t in vocab)
    assert [token_id(t, 512) for t in vocab] == list(range(512))
    assert token_id("", 512) is None and token_id("ab", 512) is None and token_id("a", 512) is None


@pytest.mark.parametrize("text", ["hello", "一 丁", "\u4e00" + chr(0x4E00 + 512)])
def test_foreign_characters_are_named(text: str) -> None:
    with pytest.raises(ConfigError, match="not a token"):
        encode(text, 512)


def test_lm_gpt2_has_gpt2_layout_and_is_not_in_all() -> None:
    import torch

    model = build_model("lm-gpt2")
    assert model.head.bias is None
    assert model.blocks[0].mlp[1].approximate == "tanh"
    assert build_model("lm-small").head.bias is not None
    assert "lm-gpt2" not in resolve_models("all")
    assert resolve_models("lm-gpt2") == ["lm-gpt2"]
    out = model(torch.zeros(2, 16, dtype=torch.long))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
