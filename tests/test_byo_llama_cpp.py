"""Bring your own GGUF: a registered model's llama.cpp grid, its chat view, and audits of the real llama.cpp server.

The model is made here: a tiny Llama with a SentencePiece tokenizer trained in the test, written to GGUF with
its vocabulary and chat template (`tests/tiny_models.write_gguf`, gguf-py's own vocabulary readers), and
registered with both its Hugging Face directory and the GGUF.  llama.cpp's quantiser makes every type from that
file; the server is `python -m llama_cpp.server` on 127.0.0.1.  Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("gguf")

from hspi.collector.models import model_spec  # noqa: E402
from hspi.collector.probes import ProbeSet  # noqa: E402
from hspi.collector.prompt_codec import codec_for  # noqa: E402
from hspi.collector.registry import HOME_ENV, ModelRegistry  # noqa: E402
from hspi.collector.targets.http_client import QueryBudget  # noqa: E402
from hspi.collector.targets.llama_cpp import llama_cpp_available  # noqa: E402
from hspi.collector.targets.openai import OpenAICompatibleTarget  # noqa: E402
from hspi.errors import ConfigError, TargetError  # noqa: E402
from hspi.platform import Platform  # noqa: E402
from tests.tiny_models import llama_dir, sharpen_output_layer, train_sentencepiece, write_gguf  # noqa: E402

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
pytestmark = needs_llama_cpp


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Registered: gg-llama (HF + GGUF with tokenizer), gg-no-vocab (GGUF without one), gg-quantised (Q8_0
    matrices), gg-other-vocab (a GGUF whose tokenizer is not the HF one), hf-only (no GGUF), gg-other-template
    (a GGUF whose chat template is not the HF one)."""
    root = tmp_path_factory.mktemp("byo-gguf")
    before = {k: os.environ.get(k) for k in (HOME_ENV, "HSPI_CACHE_DIR")}
    os.environ[HOME_ENV], os.environ["HSPI_CACHE_DIR"] = str(root / "home"), str(root / "cache")
    codec_for.cache_clear()
    hf = sharpen_output_layer(llama_dir(root / "llama", seed=11))
    registry = ModelRegistry()
    registry.add("gg-llama", hf=hf, gguf=write_gguf(hf, root / "llama-f32.gguf", tokenizer=True))
    registry.add("gg-no-vocab", hf=hf, gguf=write_gguf(hf, root / "no-vocab.gguf"))
    registry.add(
        "gg-quantised", hf=hf, gguf=write_gguf(hf, root / "q8.gguf", quantise=("blk.0.ffn_up.weight",), tokenizer=True)
    )
    other = root / "other-vocab"  # the same weights, another SentencePiece model (trained on other text)
    shutil.copytree(hf, other)
    (other / "tokenizer.model").write_bytes(train_sentencepiece(400, seed=1))
    registry.add("gg-other-vocab", hf=hf, gguf=write_gguf(other, root / "other-vocab.gguf", tokenizer=True))
    registry.add("hf-only", hf=hf)
    template = root / "other-template"  # the same weights and tokenizer, another chat template in the GGUF
    shutil.copytree(hf, template)
    (template / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    registry.add("gg-other-template", hf=hf, gguf=write_gguf(template, root / "other-template.gguf", tokenizer=True))
    try:
        yield root
    finally:
        codec_for.cache_clear()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def engine_answer(model: str, platform: str) -> np.ndarray:
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    probes = ProbeSet(model_spec(model), "pool", 8)
    target = LlamaCppTarget(model, Platform.parse(platform))
    return target.answer(probes, probes.ids[:3]).native


# ---------------------------------------------------------------- what a registered GGUF must be


def test_models_without_a_usable_gguf_are_refused_with_the_fix(home: Path) -> None:
    from hspi.collector.collect import collect

    with pytest.raises(
        ConfigError,
        match=r"'hf-only' has no GGUF: .*convert_hf_to_gguf\.py, `hspi model add hf-only --hf DIR --convert-gguf`.*--gguf FILE",
    ):
        collect("llama-cpp-smoke", "hf-only", home / "never")
    assert not (home / "never" / "dataset.json").exists()
    with pytest.raises(ConfigError, match=r"no-vocab\.gguf has no tokenizer"):
        engine_answer("gg-no-vocab", "cpu:native/F32/llama.cpp/threads=1")
    with pytest.raises(ConfigError, match=r"q8\.gguf holds Q8_0 tensors; .*F32, F16 or BF16 GGUF"):
        engine_answer("gg-quantised", "cpu:native/Q4_0/llama.cpp/threads=1")


def test_a_q8_0_kv_cache_needs_whole_blocks_per_head(home: Path) -> None:
    """llama.cpp cannot make a q8_0 KV cache for heads of 16 values: the configuration is skipped, named."""
    from hspi.collector.collect import unsupported_platforms
    from hspi.collector.grid import grid_platforms
    from hspi.collector.targets.llama_cpp import check_llama_cpp_supported

    with pytest.raises(ConfigError, match="divisible by 32; gg-llama's is 16"):
        check_llama_cpp_supported(Platform.parse("cpu:native/F16/llama.cpp/fa=on/kv=q8_0"), "gg-llama")
    skipped = unsupported_platforms(grid_platforms("llama-cpp"), ["gg-llama"])
    assert skipped and all("kv=q8_0" in platform for platform in skipped)


def test_a_gguf_tokenizer_other_than_the_models_is_caught_before_any_reference(home: Path) -> None:
    with pytest.raises(TargetError, match=r"probe \d+'s text .* tokenizes to other ids in llama\.cpp"):
        engine_answer("gg-other-vocab", "cpu:native/F32/llama.cpp/threads=1")


def test_a_gguf_chat_template_other_than_the_models_is_caught(home: Path) -> None:
    with pytest.raises(TargetError, match=r"renders as .* in llama\.cpp and as .*: the GGUF's template is not"):
        engine_answer("gg-other-template:chat", "cpu:native/F32/llama.cpp/threads=1")
    assert engine_answer("gg-other-template", "cpu:native/F32/llama.cpp/threads=1").shape == (3, 400)


def test_every_type_comes_from_the_registered_file_through_llama_cpps_quantiser(home: Path) -> None:
    from hspi.collector.gguf_export import export_gguf
    from hspi.collector.model_files import inspect_gguf

    made = {t: inspect_gguf(export_gguf("gg-llama", t, home / "exports")) for t in ("F32", "F16", "Q8_0")}
    assert set(made["F16"].tensor_types) == {"F16", "F32"} and "Q8_0" in made["Q8_0"].tensor_types
    assert made["F32"].weights_sha256 == inspect_gguf(home / "llama-f32.gguf").weights_sha256
    # the chat view shares the model's files; its probes are the model's words inside the template
    assert export_gguf("gg-llama:chat", "Q8_0", home / "exports") == export_gguf("gg-llama", "Q8_0", home / "exports")
    f32, q8 = (
        engine_answer("gg-llama", "cpu:native/F32/llama.cpp/threads=1"),
        engine_answer("gg-llama", "cpu:native/Q8_0/llama.cpp/threads=1"),
    )
    assert f32.shape == (3, 400) and not np.array_equal(f32, q8)
    chat = engine_answer("gg-llama:chat", "cpu:native/F32/llama.cpp/threads=1")
    assert not np.array_equal(chat, f32)  # another input: the template's ids


def test_chat_view_spec_and_codec(home: Path) -> None:
    spec, chat = model_spec("gg-llama"), model_spec("gg-llama:chat")
    assert chat.version.startswith(spec.version + "-chat") and chat.n_outputs == spec.n_outputs
    probes = ProbeSet(chat, "pool", 4)
    content = probes.inputs(probes.ids[:1])[0]
    ids = codec_for("gg-llama:chat").model_input(content)
    rendered = codec_for("gg-llama:chat").rendered(codec_for("gg-llama").decode(content))  # type: ignore[attr-defined]
    assert rendered.startswith("user: ") and len(ids) > len(content)
    with pytest.raises(ConfigError, match="built-in models have no chat template"):
        model_spec("lm-small:chat")


def test_a_chat_prompt_of_another_length_is_named(home: Path) -> None:
    """The endpoint says (usage) it ran a prompt of another length than the template renders: another template."""
    spec = model_spec("gg-llama:chat")
    expected = len(codec_for("gg-llama:chat").model_input(ProbeSet(spec, "pool", 2).inputs(np.array([0]))[0]))
    word = codec_for("gg-llama").token_text(int(codec_for("gg-llama").word_ids()[0]))  # type: ignore[attr-defined]

    def reply(prompt_tokens: int) -> httpx.MockTransport:
        body = {
            "choices": [
                {
                    "message": {"role": "assistant", "content": word},
                    "logprobs": {"content": [{"token": word, "logprob": -0.1, "top_logprobs": []}]},
                }
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
        }
        return httpx.MockTransport(lambda _request: httpx.Response(200, content=json.dumps(body).encode()))

    for reported, mismatch in ((expected, False), (expected + 1, False), (expected + 7, True)):
        target = OpenAICompatibleTarget(
            "http://127.0.0.1:9/v1", "gg-llama:chat", QueryBudget(4, 400), api="chat", transport=reply(reported)
        )
        target.first_token(ProbeSet(spec, "pool", 2).inputs(np.array([0]))[0], 0)
        reason = target.prompt_mismatch()
        assert (reason is not None) == mismatch
        if mismatch:
            assert f"chat prompt of {reported} tokens where gg-llama:chat's chat template renders {expected}" in str(
                reason
            )
    with pytest.raises(ConfigError, match="chat-templated; audit it with --api chat"):
        OpenAICompatibleTarget("http://127.0.0.1:9/v1", "gg-llama:chat", QueryBudget(4, 400), api="completions")


def test_audit_settings_send_chat_audits_to_the_chat_view(home: Path) -> None:
    from hspi.audit import AuditSettings

    settings = AuditSettings(endpoint="http://127.0.0.1:9/v1", model="gg-llama", api="chat")
    assert settings.model == "gg-llama:chat" and settings.served_model == "gg-llama"
    assert AuditSettings(endpoint="http://127.0.0.1:9/v1", model="gg-llama").model == "gg-llama"
    assert AuditSettings(endpoint="http://127.0.0.1:9/v1", model="lm-small", api="chat").model == "lm-small"


# ---------------------------------------------------------------- llama.cpp's own converter


def _converter_installed() -> bool:
    from hspi.collector.gguf_convert import converter_source

    try:
        converter_source()
    except ConfigError:
        return False
    return True


def hspi(*args: str) -> subprocess.CompletedProcess:
    """The command line in a subprocess (its one-line errors and exit codes), under the module's HSPI_HOME."""
    return subprocess.run([sys.executable, "-m", "hspi", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    not _converter_installed(), reason="llama.cpp's converter is not installed (make setup extracts it)"
)
def test_model_add_converts_with_llama_cpps_converter_and_refuses_what_it_refuses(home: Path) -> None:
    """`hspi model add --convert-gguf`: the SentencePiece Llama converts (and its tensors check against the HF
    weights); a byte-level BPE trained here is refused by the converter (a pre-tokenizer it does not know)."""
    from hspi.collector.registry import registered_card
    from tests.tiny_models import qwen2_dir

    made = hspi("model", "add", "gg-converted", "--hf", str(home / "llama"), "--convert-gguf")
    assert made.returncode == 0 and "equal to the HF weights" in made.stdout, made.stderr
    card, original = registered_card("gg-converted"), registered_card("gg-llama")
    assert card is not None and card.gguf is not None and original is not None and original.gguf is not None
    assert card.gguf.weights_sha256 == original.gguf.weights_sha256  # the same tensors as our own writer's
    assert engine_answer("gg-converted", "cpu:native/Q8_0/llama.cpp/threads=1").shape == (3, 400)
    refused = hspi("model", "add", "gg-bpe", "--hf", str(qwen2_dir(home / "qwen-bpe", seed=3)), "--convert-gguf")
    assert refused.returncode == 4 and "llama.cpp's converter refused" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and registered_card("gg-bpe") is None


def test_model_add_without_the_converter_says_how_to_get_it(home: Path, tmp_path: Path) -> None:
    run = hspi(
        "model", "add", "gg-none", "--hf", str(home / "llama"), "--convert-gguf", "--llama-cpp-source", str(tmp_path)
    )
    assert run.returncode == 2 and "no convert_hf_to_gguf.py in" in run.stderr and "make setup" in run.stderr
    assert "Traceback" not in run.stderr


# ---------------------------------------------------------------- collect, train, serve, audit


@pytest.fixture(scope="module")
def collected(home: Path) -> tuple[Path, Path]:
    from hspi.classifier.training import train
    from hspi.collector.collect import collect
    from hspi.dataset import Dataset

    dataset, classifier = home / "dataset", home / "classifier"
    collect("llama-cpp-smoke", "gg-llama,gg-llama:chat", dataset, pool=48, fresh=16, replay=24)
    grid = home / "torch-grid.yaml"
    grid.write_text("platforms:\n  - cpu:native/fp32/torch-eager\n  - cpu:native/bf16/torch-eager\n")
    torch_dataset = home / "torch-dataset"
    collect(str(grid), "gg-llama:chat", torch_dataset, pool=48, fresh=16, replay=24)
    train(Dataset(dataset), classifier, tiers=["topk5", "text"])
    train(Dataset(torch_dataset), home / "torch-classifier", tiers=["topk20"])
    return dataset, classifier


def audit(url: str, dataset: Path, classifier: Path, seed: int, claim: dict[str, str], api: str, tier: str):  # type: ignore[no-untyped-def]
    from hspi.audit import AuditSettings, run_audit
    from hspi.terms import Tier

    settings = AuditSettings(
        endpoint=url,
        model="gg-llama",
        api=api,  # type: ignore[arg-type]
        budget_queries=16,
        max_tier=Tier(tier),
        seed=seed,
        dataset=dataset,
        classifier=classifier,
        timeout_s=60.0,
        claim=claim,
    )
    return run_audit(settings)


@pytest.mark.slow
def test_llama_cpp_server_of_a_registered_gguf_is_audited_by_completions_and_chat(
    home: Path, collected: tuple[Path, Path]
) -> None:
    from hspi.collector.llama_cpp_server import llama_cpp_server
    from hspi.dataset import Dataset
    from hspi.terms import Verdict

    dataset, classifier = collected
    manifest = Dataset(dataset).manifest
    assert set(manifest.probe_sets) == {"gg-llama", "gg-llama:chat"} and len(manifest.configs) == 3
    with llama_cpp_server(Platform.parse("cpu:native/Q8_0/llama.cpp/threads=1"), "gg-llama") as url:
        for api in ("completions", "chat"):
            report = audit(url, dataset, classifier, 1, {"dtype": "Q8_0"}, api, "topk5")
            assert report.verdict == Verdict.CONSISTENT, (api, report.reason)
            assert report.heads["dtype"].guesses[0].label == "Q8_0" and report.queries <= 16
            assert report.model == ("gg-llama:chat" if api == "chat" else "gg-llama")
            report = audit(url, dataset, classifier, 2, {"dtype": "F32"}, api, "topk5")
            assert report.verdict == Verdict.INCONSISTENT, (api, report.reason)
        # text only: the pool-only greedy vote (no border prompts for a registered model) never accuses the truth
        report = audit(url, dataset, classifier, 3, {"dtype": "Q8_0"}, "completions", "text")
        assert report.tier is not None and report.tier.value == "text"
        assert report.verdict in (Verdict.CONSISTENT, Verdict.INCONCLUSIVE), report.reason
    vote = json.loads((classifier / "gg-llama" / "text" / "greedy-vote.json").read_text())
    assert list(vote["kinds"]) == ["pool"] and vote["metadata"]["kinds"] == ["pool"]


@pytest.mark.slow
def test_hf_based_server_chat_is_audited_against_the_chat_view(home: Path, collected: tuple[Path, Path]) -> None:
    from hspi.audit.endpoint_evaluation import served_target
    from hspi.terms import Verdict

    with served_target("gg-llama", "cpu:native/bf16/torch-eager", log_path=home / "serve-chat.log") as url:
        report = audit(url, home / "torch-dataset", home / "torch-classifier", 3, {"dtype": "bf16"}, "chat", "topk20")
        assert report.verdict == Verdict.CONSISTENT, report.reason
        assert report.heads["dtype"].guesses[0].label == "bf16"
        # a chat request with a system message is not what the references ran on: refused, in one line
        reply = httpx.post(
            url + "/chat/completions",
            json={
                "model": "gg-llama",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": " a"}],
                "max_tokens": 1,
            },
            timeout=60,
        )
        assert reply.status_code == 400 and "one user message" in reply.json()["error"]["message"]
