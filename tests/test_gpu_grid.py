"""The gpu-default grid, CUDA platforms and provenance, and the device script's packing: everything but the GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hspi.collector.grid import grid_platforms
from hspi.collector.targets.local import LocalTarget, check_supported
from hspi.errors import ConfigError
from hspi.platform import Platform, gpu_hardware_label, platform_labels
from hspi.provenance import loaded_library_version, parse_nvidia_smi

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run_gpu_grid.py"


def _script():
    spec = importlib.util.spec_from_file_location("run_gpu_grid", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_default_covers_the_knobs() -> None:
    grid = grid_platforms("gpu-default")
    assert len(grid) == len({p.id for p in grid}) == 31
    assert all(p.device == "cuda" for p in grid)
    fp32 = [p for p in grid if p.dtype == "fp32"]
    assert {p.tf32 for p in fp32} == {False, True}
    assert {p.dtype for p in grid} == {"fp32", "bf16", "fp16"}
    assert {p.attention for p in grid} == {"sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"}
    assert {p.engine for p in grid} == {"torch-eager", "torch-compile", "jax"}
    assert {p.batch_size for p in grid} == {1, 8, 32}
    assert not [p for p in grid if p.attention in ("sdpa-flash", "sdpa-cudnn") and p.dtype == "fp32"]
    for platform in grid:
        assert Platform.parse(platform.id) == platform
        for model in ("mlp", "cnn", "lm-small"):
            check_supported(platform, model)


def test_cuda_platform_ids_labels_and_rules() -> None:
    platform = Platform.parse("cuda:native/fp32/torch-eager/bs=8/tf32=on")
    assert platform.device == "cuda" and platform.tf32 and platform.batch_size == 8
    assert platform.kernel == "attn=sdpa,bs=8,tf32=on"
    provenance = {"gpu_name": "NVIDIA H200", "gpu_capability": "9.0", "cpu_vendor": "intel"}
    assert gpu_hardware_label(provenance) == "nvidia-h200-sm90"
    assert platform_labels(platform, provenance)["hardware"] == "nvidia-h200-sm90"
    assert gpu_hardware_label({}) == "gpu-unreported"
    with pytest.raises(ConfigError, match="bad knob 'tf32=maybe'"):
        Platform.parse("cuda:native/fp32/torch-eager/tf32=maybe")
    refused = {
        "cpu:native/fp32/torch-eager/tf32=on": "tf32=on is a CUDA knob",
        "cpu:native/bf16/torch-eager/attn=sdpa-flash": "runs on CUDA only",
        "cuda:native/fp32/onnxruntime-all": "engines are torch-eager, torch-compile and jax",
        "cuda:avx2/fp32/torch-eager": "CPU knobs",
        "cuda:native/bf16/torch-eager/tf32=on": "changes fp32 arithmetic only",
    }
    for platform_id, needle in refused.items():
        with pytest.raises(ConfigError, match=needle):
            check_supported(Platform.parse(platform_id), "lm-small")
    with pytest.raises(ConfigError, match="int8-dyn"):
        check_supported(Platform(device="cuda", dtype="int8-dyn", quant_engine="x86"), "mlp")


def test_a_cuda_target_refuses_cleanly_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    target = LocalTarget("mlp", Platform(device="cuda"))
    with pytest.raises(ConfigError, match="needs CUDA; torch .* sees no CUDA device"):
        target.run_inputs(__import__("numpy").zeros((1, 64), dtype="float32"))


def test_collect_refuses_the_gpu_grid_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, "-m", "hspi", "collect", "--grid", "gpu-default", "--models", "mlp", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: grid gpu-default runs on CUDA; torch {torch.__version__} sees no CUDA device here "
        "(collect it on a GPU machine, e.g. benchmarks/gpu/, or with `hspi fleet collect`)"
    ]
    assert not out.exists()


def test_nvidia_smi_and_library_versions_parse() -> None:
    line = "580.159.03, NVIDIA H200, 00000000:00:05.0, 1980 MHz, 3201 MHz, 1980 MHz, 3201 MHz, 1980 MHz, 700.00 W, P0, Default\n"
    parsed = parse_nvidia_smi(line)
    assert parsed["driver_version"] == "580.159.03" and parsed["name"] == "NVIDIA H200"
    assert parsed["clocks.max.sm"] == "1980 MHz" and parsed["pstate"] == "P0"
    assert loaded_library_version("libno-such-library", "nothing") is None


def test_device_script_packs_into_at_most_eight_files(tmp_path: Path) -> None:
    script = _script()
    assert script.plan_parts(0) == [(0, 0)]
    assert script.plan_parts(10, part_bytes=4) == [(0, 4), (4, 8), (8, 10)]
    assert len(script.plan_parts(script.MAX_PARTS * script.MAX_FILE_BYTES)) == script.MAX_PARTS
    with pytest.raises(ValueError, match="at most 6 come back"):
        script.plan_parts(script.MAX_PARTS * script.MAX_FILE_BYTES + 1)
    dataset = tmp_path / "gpu-h200"
    (dataset / "shards").mkdir(parents=True)
    (dataset / "exports").mkdir()
    (dataset / "dataset.json").write_text("{}")
    (dataset / "shards" / "a.parquet").write_bytes(bytes(range(256)) * 100)
    (dataset / "exports" / "m.onnx").write_bytes(b"x" * 1000)  # rebuilt from the seeded weights: not carried
    data = script.tar_bytes(dataset, "gpu-h200")
    assert data == script.tar_bytes(dataset, "gpu-h200")
    out = tmp_path / "out"
    out.mkdir()
    parts = script.write_parts(data, out)
    assert script.join_parts(parts) == data
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["gpu-h200/dataset.json", "gpu-h200/shards/a.parquet"]


def test_device_script_on_a_machine_without_cuda_reports_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.chdir(tmp_path)  # the script moves into its work directory; this restores the cwd afterwards
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    code = _script().main(["--out", str(out), "--work", str(tmp_path / "work"), "--models", "mlp"])
    assert code == 1
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-grid-summary.json", "gpu-grid.log"]
    summary = json.loads((out / "gpu-grid-summary.json").read_text())
    assert summary["device"]["cuda_available"] is False
    assert "runs on CUDA" in summary["collect_error"]
