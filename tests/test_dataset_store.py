"""Unit tests for hspi.responses and the on-disk store in hspi.dataset (shards and manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hspi.dataset import (
    FORMAT,
    MANIFEST,
    ConfigRecord,
    Dataset,
    Manifest,
    RunRecord,
    ShardRef,
    load_manifest,
    read_shard,
    save_manifest,
    write_shard,
)
from hspi.errors import DatasetError
from hspi.platform import Platform
from hspi.responses import Responses, bfloat16_bits_to_float32, float32_to_bfloat16_bits


def make_responses(
    native_dtype: str, n: int = 6, width: int = 12, seed: int = 0, probe_set: str = "mlp-v1/probes-v1/pool"
) -> Responses:
    values = (np.random.default_rng(seed).standard_normal((n, width)) * 4).astype(np.float32)
    if native_dtype == "float32":
        native = values
    elif native_dtype == "float16":
        native = values.astype(np.float16)
    else:
        native = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ids = np.arange(100, 100 + n, dtype=np.int32)
    return Responses("mlp", probe_set, ids, native, native_dtype)


def shard_files(directory: Path) -> list[Path]:
    return sorted((directory / "shards").glob("*.parquet"))


# --- bf16 conversions --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.uint16, st.integers(1, 32)))
def test_bf16_words_round_trip_exactly(words):
    widened = bfloat16_bits_to_float32(words)
    assert widened.dtype == np.float32
    back = float32_to_bfloat16_bits(widened)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, words)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 32), elements=st.floats(width=32, allow_nan=False)))
def test_bf16_conversions_agree_with_torch(values):
    rounded = torch.from_numpy(values).to(torch.bfloat16)
    torch_words = rounded.view(torch.int16).numpy().view(np.uint16)
    exact = rounded.float().numpy()  # bf16-representable float32 values
    np.testing.assert_array_equal(float32_to_bfloat16_bits(exact), torch_words)
    np.testing.assert_array_equal(bfloat16_bits_to_float32(torch_words).view(np.uint32), exact.view(np.uint32))


def test_bf16_known_words():
    np.testing.assert_array_equal(
        bfloat16_bits_to_float32(np.array([0x3F80, 0xC000, 0x0000, 0x3FC0], dtype=np.uint16)),
        np.array([1.0, -2.0, 0.0, 1.5], dtype=np.float32),
    )


# --- Responses ---------------------------------------------------------------------------------


def test_responses_reject_shape_mismatch_and_unknown_dtype():
    ids = np.arange(3, dtype=np.int32)
    with pytest.raises(ValueError, match="do not match"):
        Responses("mlp", "p", ids, np.zeros((4, 5), np.float32), "float32")
    with pytest.raises(ValueError):
        Responses("mlp", "p", ids, np.zeros(3, np.float32), "float32")
    with pytest.raises(ValueError, match="float64"):
        Responses("mlp", "p", ids, np.zeros((3, 5)), "float64")


@pytest.mark.parametrize("native_dtype", ["float32", "float16", "bfloat16"])
def test_as_float32_widens_exactly(native_dtype):
    r = make_responses(native_dtype)
    widened = r.as_float32()
    assert widened.dtype == np.float32 and widened.shape == r.native.shape
    if native_dtype == "bfloat16":
        expected = torch.from_numpy(r.native.view(np.int16)).view(torch.bfloat16).float().numpy()
    else:
        expected = r.native.astype(np.float64).astype(np.float32)
    np.testing.assert_array_equal(widened, expected)


def test_select_returns_rows_in_requested_order():
    r = make_responses("float32")
    picked = r.select(np.array([104, 100, 102]))
    assert picked.probe_ids.tolist() == [104, 100, 102]
    np.testing.assert_array_equal(picked.native, r.native[[4, 0, 2]])
    assert (picked.model, picked.probe_set, picked.native_dtype) == (r.model, r.probe_set, r.native_dtype)
    with pytest.raises(KeyError):
        r.select(np.array([100, 999]))


# --- shards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("native_dtype", ["float32", "float16", "bfloat16"])
def test_shard_round_trip(tmp_path, native_dtype):
    r = make_responses(native_dtype)
    ref = write_shard(tmp_path, r)
    assert ref.native_dtype == native_dtype and ref.n_probes == 6 and ref.probe_set == r.probe_set
    back = read_shard(tmp_path, ref, "mlp")
    assert back.native_dtype == native_dtype
    assert back.native.dtype == r.native.dtype
    assert back.native.shape == r.native.shape
    assert back.native.tobytes() == r.native.tobytes()
    np.testing.assert_array_equal(back.probe_ids, r.probe_ids)
    assert back.probe_set == r.probe_set and back.model == "mlp"


def test_identical_content_is_stored_once(tmp_path):
    first = write_shard(tmp_path, make_responses("float32", seed=1))
    again = write_shard(tmp_path, make_responses("float32", seed=1))
    assert first == again
    assert len(shard_files(tmp_path)) == 1
    assert shard_files(tmp_path)[0].name == f"{first.shard}.parquet"
    other = write_shard(tmp_path, make_responses("float32", seed=2))
    assert other.shard != first.shard
    assert len(shard_files(tmp_path)) == 2
    assert not list((tmp_path / "shards").glob("*.tmp"))


def test_same_bytes_in_another_dtype_is_another_shard(tmp_path):
    half = make_responses("float16")
    as_bf16 = Responses(half.model, half.probe_set, half.probe_ids, half.native.view(np.uint16), "bfloat16")
    assert write_shard(tmp_path, half).shard != write_shard(tmp_path, as_bf16).shard


@pytest.mark.parametrize("native_dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_outputs_are_refused(tmp_path, native_dtype):
    r = make_responses(native_dtype)
    native = r.native.copy()
    native[2, 3] = 0x7FC0 if native_dtype == "bfloat16" else np.nan
    with pytest.raises(DatasetError, match="NaN"):
        write_shard(tmp_path, Responses(r.model, r.probe_set, r.probe_ids, native, native_dtype))
    native[2, 3] = 0x7F80 if native_dtype == "bfloat16" else np.inf
    with pytest.raises(DatasetError):
        write_shard(tmp_path, Responses(r.model, r.probe_set, r.probe_ids, native, native_dtype))
    assert shard_files(tmp_path) == []


@pytest.fixture
def stored(tmp_path):
    r = make_responses("float32", n=16, width=32, seed=5)
    ref = write_shard(tmp_path, r)
    return tmp_path, ref, r, tmp_path / "shards" / f"{ref.shard}.parquet"


def test_truncated_shard_raises_dataset_error_naming_file(stored):
    directory, ref, _, path = stored
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as info:
        read_shard(directory, ref, "mlp")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_flipped_bytes_raise_dataset_error_naming_file(stored):
    directory, ref, _, path = stored
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle - 16, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as info:
        read_shard(directory, ref, "mlp")
    assert str(path) in str(info.value)


def test_any_single_byte_flip_is_caught_or_harmless(stored):
    """Whatever byte is damaged, a read either fails with DatasetError or returns the exact content."""
    directory, ref, original, path = stored
    data = path.read_bytes()
    caught = 0
    for position in range(0, len(data), max(1, len(data) // 150)):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        path.write_bytes(bytes(damaged))
        try:
            back = read_shard(directory, ref, "mlp")
        except DatasetError as exc:
            assert str(path) in str(exc)
            caught += 1
        else:
            assert back.native.tobytes() == original.native.tobytes()
            np.testing.assert_array_equal(back.probe_ids, original.probe_ids)
    assert caught > 0


def test_shard_under_a_wrong_hash_is_rejected(stored):
    directory, ref, _, path = stored
    other = write_shard(directory, make_responses("float32", n=16, width=32, seed=6))
    other_path = directory / "shards" / f"{other.shard}.parquet"
    path.write_bytes(other_path.read_bytes())  # a well-formed file with the wrong content
    with pytest.raises(DatasetError, match="hash") as info:
        read_shard(directory, ref, "mlp")
    assert str(path) in str(info.value)


def test_missing_shard(tmp_path):
    ref = ShardRef(shard="0" * 32, probe_set="p", n_probes=1, native_dtype="float32")
    with pytest.raises(DatasetError, match="missing shard"):
        read_shard(tmp_path, ref, "mlp")


# --- manifest ----------------------------------------------------------------------------------


def sample_manifest(ref: ShardRef) -> Manifest:
    platform = Platform(profile="avx2", dtype="bf16", batch_size=8, mkl_cbwr="COMPATIBLE")
    run = RunRecord(
        shards={"mlp": ref}, provenance={"onednn_isa": "Intel AVX2", "cpu_flags": ["avx2", "fma"]}, seconds=1.25
    )
    return Manifest(
        name="unit",
        grid="cpu-default",
        probe_sets={"mlp": {ref.probe_set: 6}},
        configs={
            platform.id: ConfigRecord(
                platform=platform, labels={"dtype": "bf16"}, runs={"reference": run}, source="unit"
            )
        },
        created="2025-01-01T00:00:00Z",
        notes=["a note"],
    )


def test_manifest_round_trip(tmp_path):
    ref = write_shard(tmp_path, make_responses("bfloat16"))
    manifest = sample_manifest(ref)
    save_manifest(tmp_path, manifest)
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.format == FORMAT
    (config_id,) = loaded.configs
    assert loaded.configs[config_id].platform == Platform.parse(config_id)
    assert loaded.configs[config_id].runs["reference"].shards["mlp"] == ref
    assert not list(tmp_path.glob("*.tmp"))


def test_dataset_reads_and_validates_shards(tmp_path):
    r = make_responses("bfloat16")
    ref = write_shard(tmp_path, r)
    manifest = sample_manifest(ref)
    save_manifest(tmp_path, manifest)
    dataset = Dataset(tmp_path)
    (config_id,) = manifest.configs
    assert dataset.models == ["mlp"]
    assert dataset.complete_configs("mlp", runs=("reference",)) == [config_id]
    assert dataset.complete_configs("mlp") == []  # no replay run
    assert dataset.responses(config_id, "reference", "mlp").native.tobytes() == r.native.tobytes()
    dataset.validate()
    with pytest.raises(DatasetError, match="replay"):
        dataset.responses(config_id, "replay", "mlp")


def test_dataset_validate_rejects_undeclared_probe_set(tmp_path):
    ref = write_shard(tmp_path, make_responses("float32"))
    manifest = sample_manifest(ref).model_copy(update={"probe_sets": {"mlp": {"mlp-v0/probes-v0/pool": 6}}})
    save_manifest(tmp_path, manifest)
    with pytest.raises(DatasetError, match="probe set"):
        Dataset(tmp_path).validate()


def test_load_manifest_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_manifest(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        json.dumps({"format": FORMAT}),  # no name
        json.dumps({"name": "x", "configs": {"c": {"platform": {"profile": "avx9"}, "labels": {}}}}),
        json.dumps([1, 2, 3]),
    ],
)
def test_load_manifest_corrupt(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match="corrupt manifest") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / MANIFEST) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_manifest_non_utf8(tmp_path):
    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(DatasetError):
        load_manifest(tmp_path)


def test_load_manifest_unsupported_format(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "hspi-dataset/99", "name": "x"}), encoding="utf-8")
    with pytest.raises(DatasetError, match="hspi-dataset/99"):
        load_manifest(tmp_path)
