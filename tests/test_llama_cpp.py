"""The llama.cpp track: GGUF export, tokenizer, LlamaCppTarget, platform rules, a real collection,
and the real llama-cpp-python server with its logprob convention and prefix-cache behaviour."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from hspi.collector.grid import grid_platforms
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.llama_cpp import llama_cpp_available
from hspi.collector.targets.local import LocalTarget, check_supported
from hspi.collector.vocabulary import decode, token_id
from hspi.errors import ConfigError, TargetError
from hspi.features.logprob_conventions import llama_cpp_python_logprobs
from hspi.platform import Platform, llama_cpp_isa_level, measured_isa_level

needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python is not installed (pip install 'hspi[llama]')"
)
VOCAB = model_spec("lm-gpt2").n_outputs
# One thread: llama.cpp's numbers do not depend on it (measured: the llama-cpp grid holds the
# pairs), and two spinning threads crawl on a busy two-core machine.
FAST_F16_BS8 = "cpu:native/F16/llama.cpp/bs=8/threads=1"


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def pool(size: int = 600) -> ProbeSet:
    return ProbeSet(model_spec("lm-gpt2"), "pool", size)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: each GGUF is written once, as the collector does."""
    return tmp_path_factory.mktemp("gguf")


# --- platform rules: one line naming the bad value -----------------------------------------------


@pytest.mark.parametrize(
    "platform_id, model, needle",
    [
        ("cpu:native/fp32/llama.cpp", "lm-gpt2", "not 'fp32'"),
        ("cpu:native/Q8_0/torch-eager", "lm-gpt2", "GGUF type Q8_0 runs on engine llama.cpp only"),
        ("cpu:native/F16/onnxruntime-all", "lm-small", "GGUF type F16"),
        ("cpu:native/F32/llama.cpp", "lm-small", "'lm-small' has no GGUF export"),
        ("cpu:native/F32/llama.cpp/kv=q8_0", "lm-gpt2", "kv=q8_0) needs flash attention"),
        ("cpu:native/F32/llama.cpp/kv=f16", "lm-gpt2", "kv=f16 is llama.cpp's default"),
        ("cpu:avx2/F32/llama.cpp", "lm-gpt2", "CPU profile 'avx2'"),
        ("cpu:native/F32/llama.cpp/attn=manual", "lm-gpt2", "knob 'attn' is a torch knob"),
        ("cpu:native/fp32/torch-eager/fa=on", "lm-small", "knob fa=on is a llama.cpp knob"),
        ("cpu:native/fp32/torch-eager/kv=f32", "lm-small", "knob kv=f32 is a llama.cpp knob"),
    ],
)
def test_unsupported_platforms_are_refused_in_one_line(platform_id: str, model: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_supported(Platform.parse(platform_id), model)
    message = str(info.value)
    assert needle in message and "\n" not in message, message


def test_local_target_sends_llama_cpp_elsewhere() -> None:
    with pytest.raises(ConfigError, match="use make_target"):
        LocalTarget("lm-gpt2", Platform.parse("cpu:native/F32/llama.cpp"))


def test_llama_cpp_grid_is_valid_and_covers_every_type_and_knob() -> None:
    grid = grid_platforms("llama-cpp")
    assert 20 <= len(grid) <= 36 and len(set(grid)) == len(grid)
    for platform in grid:
        check_supported(platform, "lm-gpt2")
    assert {p.dtype for p in grid} == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M"}
    assert {p.flash_attn for p in grid} == {False, True} and {p.batch_size for p in grid} == {1, 8}
    assert {p.kv_type for p in grid} == {None, "f32", "q8_0"}


def test_hardware_label_comes_from_llama_cpp_system_info() -> None:
    info = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 |"
    assert llama_cpp_isa_level(info) == "avx2"
    assert llama_cpp_isa_level(info + " AVX512 = 1 | AVX512_BF16 = 1 |") == "avx512_bf16"
    assert llama_cpp_isa_level("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 0 |") == "sse42"
    # the CPU's own flags (AVX-512 here) do not matter: llama.cpp's build ran AVX2 kernels
    assert measured_isa_level({"llama_cpp_system_info": info, "cpu_flags": ["avx512f"]}) == "avx2"


def test_logprob_convention_is_a_float32_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((50, VOCAB)) * 3).astype(np.float32)
    out = llama_cpp_python_logprobs(logits)
    assert out.dtype == np.float32 and out.shape == logits.shape
    exact = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    assert np.abs(out - exact).max() < 1e-5
    assert np.array_equal(bits(out[7]), bits(llama_cpp_python_logprobs(logits[7])))  # a row alone: same bits


# --- GGUF export -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_float_exports_hold_the_seeded_weights_and_are_deterministic(export_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package comes with the llama extra")
    from hspi.collector.gguf_export import CONTEXT_LENGTH, export_gguf, file_sha256, gpt2_tensors
    from hspi.collector.models import build_model

    expected = gpt2_tensors(build_model("lm-gpt2"))
    for gguf_type, dtype in (("F32", np.float32), ("F16", np.float16)):
        path = export_gguf("lm-gpt2", gguf_type, export_dir)
        reader = gguf.GGUFReader(str(path))
        stored = {t.name: np.asarray(t.data) for t in reader.tensors}
        assert set(stored) == set(expected)
        for name, array in expected.items():
            want = array if array.ndim == 1 or name == "position_embd.weight" else array.astype(dtype)
            assert np.array_equal(stored[name].reshape(want.shape), want), name
        assert np.all(stored["position_embd.weight"].reshape(CONTEXT_LENGTH, -1)[16:] == 0)  # padding rows
        fields = reader.fields
        assert bytes(fields["general.architecture"].parts[-1]).decode() == "gpt2"
        assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
        assert bool(fields["tokenizer.ggml.add_space_prefix"].parts[-1][0]) is False
        assert bool(fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) is False
        assert file_sha256(export_gguf("lm-gpt2", gguf_type, tmp_path)) == file_sha256(path)  # same bytes anew
    with pytest.raises(ConfigError, match="'lm-small' has no GGUF export"):
        export_gguf("lm-small", "F32", tmp_path)
    with pytest.raises(ConfigError, match="unknown GGUF type 'Q5_1'"):
        export_gguf("lm-gpt2", "Q5_1", tmp_path)


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_quantisation_is_deterministic(export_dir: Path, tmp_path: Path) -> None:
    from hspi.collector.gguf_export import export_gguf, file_sha256

    for gguf_type in ("Q8_0", "Q4_K_M"):
        assert file_sha256(export_gguf("lm-gpt2", gguf_type, export_dir)) == file_sha256(
            export_gguf("lm-gpt2", gguf_type, tmp_path)
        )


@pytest.mark.slow
@needs_llama_cpp
def test_gguf_tokenizer_is_a_bijection_with_the_vocabulary(export_dir: Path) -> None:
    import llama_cpp

    from hspi.collector.gguf_export import export_gguf

    llama = llama_cpp.Llama(model_path=str(export_gguf("lm-gpt2", "F32", export_dir)), vocab_only=True, verbose=False)
    every = list(range(VOCAB))
    for ids in [every, *pool(50).inputs(np.arange(50)).tolist()]:
        text = decode(ids, VOCAB)
        assert llama.tokenize(text.encode(), add_bos=False, special=True) == ids
        assert llama.detokenize(ids).decode() == text
    assert all(token_id(llama.detokenize([i]).decode(), VOCAB) == i for i in every)


@pytest.mark.slow
@needs_llama_cpp
def test_f32_gguf_logits_match_the_torch_reference(export_dir: Path) -> None:
    import torch

    from hspi.collector.models import build_model
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    probes, ids = pool(), np.arange(40, dtype=np.int32)
    with torch.no_grad():
        reference = build_model("lm-gpt2")(torch.from_numpy(probes.inputs(ids))).numpy()
    logits = (
        LlamaCppTarget("lm-gpt2", Platform.parse("cpu:native/F32/llama.cpp/threads=1"), export_dir=export_dir)
        .answer(probes, ids)
        .as_float32()
    )
    # not bit-equal: ggml's GELU reads an fp16 table and the KV cache is f16 (about 1e-3 here)
    assert np.abs(logits - reference).max() < 5e-3
    assert np.array_equal(logits.argmax(axis=1), reference.argmax(axis=1))


# --- LlamaCppTarget ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_llama_cpp
def test_target_answers_do_not_depend_on_order_or_instance(export_dir: Path) -> None:
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    platform = Platform.parse(FAST_F16_BS8)
    probes, ids = pool(), np.arange(24, dtype=np.int32)
    target = LlamaCppTarget("lm-gpt2", platform, export_dir=export_dir)
    forward = target.answer(probes, ids)
    backward = target.answer(probes, ids[::-1].copy()).select(ids)
    other = LlamaCppTarget("lm-gpt2", platform, export_dir=export_dir).answer(probes, np.roll(ids, 5)).select(ids)
    assert forward.native.dtype == np.float32 and forward.native.shape == (24, VOCAB)
    assert np.array_equal(bits(forward.native), bits(backward.native))
    assert np.array_equal(bits(forward.native), bits(other.native))
    provenance = target.provenance()
    assert provenance["gguf_sha256"] == hashlib.sha256(target.gguf_file.read_bytes()).hexdigest()
    assert "AVX" in provenance["llama_cpp_system_info"] and provenance["context"]["n_ubatch"] == 8


@pytest.mark.slow
@needs_llama_cpp
def test_prefix_cache_path_gives_other_numbers(export_dir: Path) -> None:
    """Why every probe starts from an empty cache: llama-cpp-python re-evaluates only the last
    token of a repeated prompt (after a longer completion), alone in its micro-batch, and with
    n_batch 8 that is another kernel path with other bits."""
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    probes, ids = pool(), np.arange(6, dtype=np.int32)
    target = LlamaCppTarget("lm-gpt2", Platform.parse(FAST_F16_BS8), export_dir=export_dir)
    fresh = target.answer(probes, ids).native
    llama = target._llama
    for row, tokens in enumerate(probes.inputs(ids).tolist()):
        llama.reset()
        llama.eval(tokens)
        llama.n_tokens = len(tokens) - 1  # what generate() keeps of a cached identical prompt
        llama.eval(tokens[-1:])
        assert not np.array_equal(bits(llama.scores[len(tokens) - 1]), bits(fresh[row]))


# --- a real collection -------------------------------------------------------------------------------


@pytest.mark.slow
@needs_llama_cpp
def test_small_llama_cpp_collection(tmp_path: Path) -> None:
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes

    out = tmp_path / "llama"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hspi",
            "collect",
            "--grid",
            "llama-cpp-smoke",
            "--models",
            "lm-gpt2",
            "--out",
            str(out),
            "--pool",
            "24",
            "--fresh",
            "8",
            "--replay",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    dataset = Dataset(out)
    dataset.validate()
    assert len(dataset.manifest.configs) == 3
    assert len(equivalence_classes(dataset, "lm-gpt2")) == 3  # F32, Q8_0 and n_batch 8 all differ
    for config_id, record in dataset.manifest.configs.items():
        provenance = record.runs["reference"].provenance
        assert provenance["native_dispatch"]["lm-gpt2"]["gguf_sha256"], config_id
        assert record.labels["hardware"] == f"{provenance['cpu_vendor']}-x86-" + llama_cpp_isa_level(
            provenance["llama_cpp_system_info"]
        )
        assert record.labels["engine"] == "llama.cpp"
        # another process, another order: the same bits for the same probes
        reference = dataset.responses(config_id, "reference", "lm-gpt2")
        replay = dataset.responses(config_id, "replay", "lm-gpt2")
        assert np.array_equal(bits(reference.select(replay.probe_ids).native), bits(replay.native))
    assert not list(out.glob("*.gguf")) and list((out / "exports").glob("*.gguf"))  # exports stay in exports/


# --- the real server ------------------------------------------------------------------------------------


def _complete(client: httpx.Client, base_url: str, prompt: object, max_tokens: int = 1) -> httpx.Response:
    return client.post(
        f"{base_url}/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 20}
    )


def _top20(response: httpx.Response) -> dict[int, np.float32]:
    top = response.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    return {token_id(text, VOCAB): np.float32(value) for text, value in top.items()}  # JSON float64 -> float32


def _same(top: dict[int, np.float32], logprobs: np.ndarray) -> bool:
    return all(bits(np.array([value]))[0] == bits(logprobs[[i]])[0] for i, value in top.items())


@pytest.mark.slow
@needs_llama_cpp
def test_server_logprobs_are_the_convention_applied_to_target_logits(export_dir: Path) -> None:
    from hspi.collector.llama_cpp_server import llama_cpp_server
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    platform = Platform.parse(FAST_F16_BS8)
    probes, ids = pool(), np.arange(8, dtype=np.int32)
    tokens = probes.inputs(ids)
    assert len({int(t[0]) for t in tokens}) == len(ids)  # no two consecutive prompts share a first token
    target = LlamaCppTarget("lm-gpt2", platform, export_dir=export_dir)
    expected = llama_cpp_python_logprobs(target.answer(probes, ids).native)
    with llama_cpp_server(platform, export_dir=export_dir) as base_url, httpx.Client(timeout=120) as client:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        for row, prompt in enumerate(tokens):
            response = _complete(client, base_url, decode(prompt, VOCAB))
            assert response.status_code == 200, response.text
            top = _top20(response)
            assert len(top) == 20 and _same(top, expected[row]), row
        # token-id prompts are refused: the prompt must be text
        assert _complete(client, base_url, tokens[0].tolist()).status_code != 200
        # prefix cache: an identical repeat of the last prompt re-uses its stored logits (same numbers) ...
        assert _same(_top20(_complete(client, base_url, decode(tokens[-1], VOCAB))), expected[-1])
        # ... but after a longer completion only the last token is re-evaluated: other numbers
        _complete(client, base_url, decode(tokens[1], VOCAB), max_tokens=2)
        assert not _same(_top20(_complete(client, base_url, decode(tokens[1], VOCAB))), expected[1])
        # sharing the first 7 tokens leaves the last token alone in its micro-batch of 8: other numbers
        shared = np.concatenate([tokens[2][:7], tokens[3][7:]])
        fresh_shared = llama_cpp_python_logprobs(target.fresh_logits(shared.tolist()))
        _complete(client, base_url, decode(tokens[2], VOCAB))
        assert not _same(_top20(_complete(client, base_url, decode(shared, VOCAB))), fresh_shared)
        # sharing only the first token keeps the same micro-batch shapes: the fresh numbers
        first_only = np.concatenate([tokens[4][:1], tokens[5][1:]])
        fresh_first = llama_cpp_python_logprobs(target.fresh_logits(first_only.tolist()))
        _complete(client, base_url, decode(tokens[4], VOCAB))
        assert _same(_top20(_complete(client, base_url, decode(first_only, VOCAB))), fresh_first)
    with pytest.raises(httpx.TransportError):  # the server is gone
        httpx.get(f"{base_url}/models", timeout=2.0)


@pytest.mark.slow
@needs_llama_cpp
def test_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    from hspi.collector.gguf_export import gguf_path
    from hspi.collector.llama_cpp_server import llama_cpp_server

    gguf_path("lm-gpt2", "F32", tmp_path).write_bytes(b"not a gguf file")  # a corrupt cached export
    with pytest.raises(TargetError) as info:
        with llama_cpp_server(Platform.parse("cpu:native/F32/llama.cpp"), export_dir=tmp_path):
            pass
    assert "llama.cpp server exited" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize(
    "platform_id, gguf_type, tier",
    [
        ("cpu:native/Q8_0/llama.cpp/threads=1", "Q8_0", "topk5"),
        ("cpu:native/Q4_0/llama.cpp/threads=1", "Q4_0", "top1"),
    ],
)
def test_audit_of_the_real_llama_cpp_server_names_its_quantisation(
    export_dir: Path, platform_id: str, gguf_type: str, tier: str
) -> None:
    """hspi audit against `python -m llama_cpp.server`: the shipped llama.cpp references and classifier."""
    from hspi.audit import AuditSettings, run_audit
    from hspi.collector.llama_cpp_server import llama_cpp_server

    with llama_cpp_server(Platform.parse(platform_id), export_dir=export_dir) as base_url:
        settings = AuditSettings(
            endpoint=base_url,
            model="lm-gpt2",
            max_tier=tier,
            budget_queries=16,
            seed=0,
            claim={"dtype": "F16"},
            timeout_s=60.0,
        )
        bounded = run_audit(settings)
        # the bound reported, not required: what the answers say of the quantisation
        report = run_audit(settings.model_copy(update={"false_match_rate": None}))
    # by default a class match waits for the false-match bound, which the llama.cpp classes' known twins (97%
    # of probes answered alike) put at about 275 answers; the dtype head has its own bound (no two GGUF types
    # answer a probe alike), met in a few answers: the false F16 claim is caught by default, the class unnamed
    assert bounded.stop == "bound-out-of-reach" and bounded.verdict == "inconsistent" and bounded.queries < 16
    assert bounded.heads["dtype"].guesses[0].label == gguf_type and bounded.heads["dtype"].decided
    assert bounded.matched_class is None and not bounded.heads["full"].decided
    assert report.tier == tier and report.status == "match" and report.queries <= 16
    assert report.heads["dtype"].guesses[0].label == gguf_type
    assert report.heads["full"].guesses[0].label == platform_id.removesuffix("/threads=1")
    assert report.verdict == "inconsistent"  # the claim said F16
