"""Unit tests for hspi.platform: ids, parsing, environments, measured ISA levels and head labels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hspi.errors import ConfigError
from hspi.platform import ISA_LEVELS, PROFILES, Platform, measured_isa_level, platform_labels

# Real oneDNN "isa:" strings, as recorded in datasets/cpu-amd-epyc and printed by oneDNN on AMX parts.
ONEDNN_SSE41 = "Intel SSE4.1"
ONEDNN_AVX2 = "Intel AVX2"
ONEDNN_AVX512 = "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions"
ONEDNN_BF16 = "Intel AVX-512 with Intel DL Boost and bfloat16 support"
ONEDNN_AMX = (
    "Intel AVX-512 with Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support"
)

platforms = st.builds(
    Platform,
    profile=st.sampled_from(sorted(PROFILES)),
    dtype=st.sampled_from(["fp32", "bf16", "fp16", "int8-dyn"]),
    engine=st.sampled_from(["torch-eager", "torch-compile", "onnxruntime-basic", "onnxruntime-all"]),
    attention=st.sampled_from(["sdpa", "sdpa-math", "manual"]),
    batch_size=st.integers(1, 512),
    quant_engine=st.sampled_from([None, "x86", "onednn", "qnnpack"]),
    matmul_precision=st.sampled_from(["highest", "medium"]),
    mkl_cbwr=st.sampled_from([None, "COMPATIBLE", "AUTO", "AVX2", "AVX512", "SSE4_2"]),
    threads=st.integers(1, 64),
)


# --- ids ---------------------------------------------------------------------------------------


def test_default_platform_id_has_no_knobs():
    assert Platform().id == "cpu:native/fp32/torch-eager"


def test_id_lists_only_non_default_knobs_in_fixed_order():
    p = Platform(profile="avx2", dtype="bf16", attention="manual", batch_size=8)
    assert p.id == "cpu:avx2/bf16/torch-eager/attn=manual/bs=8"


def test_id_with_every_knob_set():
    p = Platform(
        profile="amx",
        dtype="int8-dyn",
        engine="onnxruntime-all",
        attention="sdpa-math",
        batch_size=4,
        quant_engine="onednn",
        matmul_precision="medium",
        mkl_cbwr="COMPATIBLE",
        threads=8,
    )
    assert p.id == (
        "cpu:amx/int8-dyn/onnxruntime-all/attn=sdpa-math/bs=4/qengine=onednn/mm=medium/mkl-cbwr=compatible/threads=8"
    )


@settings(max_examples=150, deadline=None)
@given(platforms)
def test_parse_inverts_id(platform):
    parsed = Platform.parse(platform.id)
    assert parsed == platform
    assert parsed.id == platform.id
    assert hash(parsed) == hash(platform)


def test_parse_accepts_knobs_in_any_order_and_surrounding_space():
    canonical = Platform.parse("cpu:avx2/fp32/torch-eager/attn=manual/bs=8")
    shuffled = Platform.parse("  cpu:avx2/fp32/torch-eager/bs=8/attn=manual \n")
    assert shuffled == canonical
    assert canonical.attention == "manual" and canonical.batch_size == 8


def test_parse_converts_knob_values_to_field_types():
    p = Platform.parse("cpu:sse42/fp16/torch-compile/bs=16/threads=4/mkl-cbwr=avx2")
    assert p.batch_size == 16 and isinstance(p.batch_size, int)
    assert p.threads == 4
    assert p.mkl_cbwr == "AVX2"
    assert p.profile == "sse42" and p.dtype == "fp16" and p.engine == "torch-compile"


@pytest.mark.parametrize(
    ("platform_id", "bad"),
    [
        ("cpu:avx9/fp32/torch-eager", "avx9"),
        ("cpu:avx2/fp64/torch-eager", "fp64"),
        ("cpu:avx2/fp32/tensorrt", "tensorrt"),
        ("gpu:avx2/fp32/torch-eager", "gpu"),
        ("cpu:avx2/fp32/torch-eager/bs=0", "bs=0"),
        ("cpu:avx2/fp32/torch-eager/bs=eight", "bs=eight"),
        ("cpu:avx2/fp32/torch-eager/threads=0", "threads=0"),
        ("cpu:avx2/fp32/torch-eager/attn=flash", "attn=flash"),
        ("cpu:avx2/fp32/torch-eager/colour=blue", "colour=blue"),
        ("cpu:avx2/fp32/torch-eager/bs=", "bs="),
        ("cpu:avx2/fp32/torch-eager/bs", "bs"),
        ("cpu:avx2/fp32", "cpu:avx2/fp32"),
        ("cpu/fp32/torch-eager", "cpu/fp32/torch-eager"),
        ("cpu:avx2:x/fp32/torch-eager", "cpu:avx2:x"),
        ("", "''"),
    ],
)
def test_parse_rejects_bad_ids_with_one_line_config_error(platform_id, bad):
    with pytest.raises(ConfigError) as info:
        Platform.parse(platform_id)
    message = str(info.value)
    assert bad in message
    assert "\n" not in message
    assert info.value.exit_code == 2


# --- model behaviour ---------------------------------------------------------------------------


def test_platform_is_frozen_and_hashable():
    p = Platform(profile="avx2")
    with pytest.raises(ValidationError):
        p.dtype = "bf16"  # type: ignore[misc]
    assert len({Platform(profile="avx2"), Platform.parse("cpu:avx2/fp32/torch-eager"), Platform()}) == 2


@pytest.mark.parametrize("fields", [{"profile": "avx1024"}, {"batch_size": 0}, {"threads": -1}, {"colour": "red"}])
def test_constructor_validates_fields(fields):
    with pytest.raises(ValidationError):
        Platform(**fields)


def test_environment_of_a_capped_profile():
    env = Platform(profile="avx2", threads=3).environment()
    assert env == {
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
    }


def test_environment_of_native_sets_only_threads_and_cbwr():
    env = Platform(mkl_cbwr="COMPATIBLE").environment()
    assert env == {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_environment_does_not_mutate_the_profile_table():
    before = {name: dict(env) for name, env in PROFILES.items()}
    env = Platform(profile="sse42", mkl_cbwr="AUTO", threads=5).environment()
    env["EXTRA"] = "1"
    assert PROFILES == before
    assert Platform(profile="sse42").environment()["OMP_NUM_THREADS"] == "2"


def test_kernel_label():
    assert Platform().kernel == "attn=sdpa,bs=1,mm=highest"
    p = Platform(attention="manual", batch_size=8, matmul_precision="medium", quant_engine="x86", mkl_cbwr="AVX2")
    assert p.kernel == "attn=manual,bs=8,mm=medium,qengine=x86,mkl-cbwr=avx2"


# --- measured ISA level and labels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("onednn", "aten", "expected"),
    [
        (ONEDNN_SSE41, "DEFAULT", "sse42"),
        (ONEDNN_AVX2, "AVX2", "avx2"),
        (ONEDNN_AVX512, "AVX512", "avx512"),
        (ONEDNN_BF16, "AVX512", "avx512_bf16"),
        ("", "AVX512", "avx512"),
        ("", None, "unreported"),
        (ONEDNN_BF16, None, "avx512_bf16"),
        (ONEDNN_AMX, None, "amx"),
        # ATen capped lower than oneDNN: the lower level is what ran
        (ONEDNN_BF16, "AVX2", "avx2"),
        (ONEDNN_AVX512, "DEFAULT", "sse42"),
        (ONEDNN_AVX2, "DEFAULT", "sse42"),
        # ATen higher than oneDNN does not raise the level
        (ONEDNN_AVX2, "AVX512", "avx2"),
        (ONEDNN_SSE41, "AVX2", "sse42"),
    ],
)
def test_measured_isa_level(onednn, aten, expected):
    provenance = {"onednn_isa": onednn}
    if aten is not None:
        provenance["aten_capability"] = aten
    level = measured_isa_level(provenance)
    assert level == expected
    assert level in ISA_LEVELS + ("unreported",)


def test_measured_isa_level_amx_with_aten_avx512():
    # the `amx` profile sets ATEN_CPU_CAPABILITY=avx512, and ATen has no level above AVX512
    assert measured_isa_level({"onednn_isa": ONEDNN_AMX, "aten_capability": "AVX512"}) == "amx"


def test_platform_labels():
    p = Platform(profile="avx512_bf16", dtype="bf16", engine="onnxruntime-basic", batch_size=4)
    labels = platform_labels(p, {"cpu_vendor": "amd", "onednn_isa": ONEDNN_BF16, "aten_capability": "AVX512"})
    assert labels == {
        "hardware": "amd-x86-avx512_bf16",
        "dtype": "bf16",
        "engine": "onnxruntime-basic",
        "kernel": "attn=sdpa,bs=4,mm=highest",
    }


def test_platform_labels_use_measured_not_requested_isa():
    requested_amx = Platform(profile="amx")
    labels = platform_labels(requested_amx, {"cpu_vendor": "intel", "onednn_isa": ONEDNN_AVX2})
    assert labels["hardware"] == "intel-x86-avx2"
    assert platform_labels(requested_amx, {})["hardware"] == "unknown-x86-unreported"
