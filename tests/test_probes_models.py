"""Unit tests for hspi.collector.probes and hspi.collector.models: deterministic probes and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hspi.collector.models import MODEL_SPECS, TinyDecoderLM, build_model, model_spec, resolve_models
from hspi.collector.probes import PROBE_SET_VERSION, ProbeSet
from hspi.errors import ConfigError


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def probe_set(model: str, kind: str = "pool", size: int = 8) -> ProbeSet:
    return ProbeSet(model_spec(model), kind, size)


# --- probes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_probe_inputs_are_deterministic(model):
    ids = np.array([0, 5, 3, 7], dtype=np.int32)
    first = probe_set(model).inputs(ids)
    second = ProbeSet(model_spec(model), "pool", 8).inputs(ids.copy())
    assert first.tobytes() == second.tobytes()
    spec = model_spec(model)
    assert first.shape == (4,) + spec.input_shape
    if spec.input_kind == "tokens":
        assert first.dtype == np.int64
        assert first.min() >= 0 and first.max() < spec.n_outputs
    else:
        assert first.dtype == np.float32
        assert abs(float(first.mean())) < 0.5 and 0.5 < float(first.std()) < 1.5


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_each_probe_depends_only_on_its_id(model):
    ps = probe_set(model)
    together = ps.inputs(np.array([2, 6]))
    np.testing.assert_array_equal(ps.inputs(np.array([6, 2])), together[::-1])
    np.testing.assert_array_equal(ps.inputs(np.array([6]))[0], together[1])
    assert not np.array_equal(together[0], together[1])


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_pool_and_fresh_streams_differ(model):
    ids = np.arange(4)
    pool = probe_set(model, "pool").inputs(ids)
    fresh = probe_set(model, "fresh").inputs(ids)
    assert pool.shape == fresh.shape
    for a, b in zip(pool, fresh):
        assert not np.array_equal(a, b)


def test_models_get_different_probe_streams():
    mlp = probe_set("mlp").inputs(np.arange(3)).reshape(3, -1)
    cnn = probe_set("cnn").inputs(np.arange(3)).reshape(3, -1)
    assert not np.array_equal(mlp[:, :64], cnn[:, :64])


def test_probe_set_ids_and_version():
    ps = probe_set("lm-small", "fresh", size=5)
    np.testing.assert_array_equal(ps.ids, np.arange(5))
    assert ps.ids.dtype == np.int32
    assert ps.version == f"lm-small-v1/{PROBE_SET_VERSION}/fresh"


def test_unknown_probe_set_kind():
    with pytest.raises(ConfigError, match="holdout"):
        ProbeSet(model_spec("mlp"), "holdout", 4)


# --- model specs -------------------------------------------------------------------------------


def test_model_spec_lookup():
    assert model_spec("mlp").n_outputs == 128
    with pytest.raises(ConfigError, match="resnet"):
        model_spec("resnet")


def test_resolve_models():
    assert resolve_models("all") == ["mlp", "cnn", "lm-small"]
    assert resolve_models(" all ") == ["mlp", "cnn", "lm-small"]
    assert resolve_models("lm-small, mlp") == ["lm-small", "mlp"]
    assert resolve_models("cnn,") == ["cnn"]


@pytest.mark.parametrize("names", ["mlp,gpt2", "gpt2", "", " , ", "ALL"])
def test_resolve_models_rejects_unknown_or_empty(names):
    with pytest.raises(ConfigError):
        resolve_models(names)


# --- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_build_model_is_deterministic(model):
    a, b = build_model(model).state_dict(), build_model(model).state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_different_models_have_different_weights():
    mlp_first = next(iter(build_model("mlp").parameters()))
    lm_embed = build_model("lm-small").embed.weight
    assert not torch.equal(mlp_first.flatten()[:100], lm_embed.flatten()[:100])


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    build_model("mlp")
    assert torch.equal(torch.rand(5), expected)


def test_lm_size():
    lm = build_model("lm-small")
    assert not lm.training
    assert lm.embed.num_embeddings >= 512
    assert lm.head.out_features == lm.embed.num_embeddings == model_spec("lm-small").n_outputs
    assert len(lm.blocks) >= 4


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_forward_gives_one_output_vector_per_probe(model):
    spec = model_spec(model)
    inputs = probe_set(model).inputs(np.arange(3))
    with torch.no_grad():
        out = build_model(model)(torch.from_numpy(inputs))
    assert tuple(out.shape) == (3, spec.n_outputs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert float(out.std()) > 0.5  # logits spread over a few nats, not ~0


def test_attention_variants_agree_to_float32_precision():
    tokens = torch.from_numpy(probe_set("lm-small").inputs(np.arange(4)))
    with torch.no_grad():
        outputs = {name: build_model("lm-small", attention=name)(tokens) for name in ("sdpa", "sdpa-math", "manual")}
    torch.testing.assert_close(outputs["manual"], outputs["sdpa"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["sdpa-math"], outputs["sdpa"], rtol=1e-4, atol=1e-4)


def test_unknown_attention():
    with pytest.raises(ConfigError, match="flash"):
        build_model("lm-small", attention="flash")
    with pytest.raises(ConfigError):
        TinyDecoderLM(vocab=512, seq_len=16, attention="flash")
