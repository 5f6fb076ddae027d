"""Hardware labels across CPUs: vendor and model from measured provenance; a class identical on two
CPUs carries both; `hspi platforms` says which classes are vendor-specific.  The manifests here are
small synthetic ones (label logic only); the two-CPU data itself is real (benchmarks/two_vendors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from hspi.cli import app
from hspi.dataset import ConfigRecord, Dataset, Manifest, RunRecord, save_manifest, write_shard
from hspi.dataset_merge import merge
from hspi.equivalence import equivalence_classes, measured_on, measured_vendors
from hspi.platform import Platform, cpu_hardware_label, cpu_model_slug, platform_labels
from hspi.responses import Responses

AVX2 = "Intel AVX2"  # what oneDNN prints for an AVX2 path, on either vendor
AMD = {"cpu_vendor": "amd", "cpu_model": "AMD EPYC", "onednn_isa": AVX2, "aten_capability": "AVX2"}
INTEL = {
    "cpu_vendor": "intel",
    "cpu_model": "Intel(R) Xeon(R) Processor",
    "onednn_isa": AVX2,
    "aten_capability": "AVX2",
}


def test_cpu_model_slug_names_only_what_was_measured():
    assert cpu_model_slug({"cpu_model": "AMD EPYC"}) == "epyc"
    assert cpu_model_slug({"cpu_model": "Intel(R) Xeon(R) Processor"}) == "xeon"
    assert cpu_model_slug({"cpu_model": "AMD EPYC 7763 64-Core Processor"}) == "epyc-7763-64-core"
    assert cpu_model_slug({"cpu_model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz"}) == "xeon-platinum-8480"
    # platform.processor()'s fallback is an architecture, and a missing model is no model
    assert cpu_model_slug({"cpu_model": "x86_64"}) == ""
    assert cpu_model_slug({"cpu_model": "unknown"}) == ""
    assert cpu_model_slug({}) == ""


def test_cpu_hardware_label_carries_vendor_model_and_measured_isa():
    assert cpu_hardware_label(AMD) == "amd-epyc-x86-avx2"
    assert cpu_hardware_label(INTEL) == "intel-xeon-x86-avx2"
    # no model measured: the label is the vendor and ISA only, as before
    assert cpu_hardware_label({"cpu_vendor": "amd", "onednn_isa": AVX2}) == "amd-x86-avx2"
    assert cpu_hardware_label(INTEL, "avx512_bf16") == "intel-xeon-x86-avx512_bf16"  # a level measured elsewhere
    # a collection keeps the vendor-ISA label (a dataset extended on one machine never holds two labels for its
    # CPU); the model is added when datasets are merged
    labels = platform_labels(Platform.parse("cpu:amx/bf16/torch-eager"), {**INTEL, "onednn_isa": "Intel AMX"})
    assert labels["hardware"] == "intel-x86-avx2"  # ATen's AVX2 caps what oneDNN reported


def _dataset(root: Path, name: str, provenance: dict, answers: dict[str, np.ndarray]) -> Path:
    """A one-model dataset whose configs answer `answers[config]` on probes 0..n-1 (reference and fresh).
    Its stored labels are the old vendor-only ones, as in datasets collected before labels named a model."""
    directory = root / name
    manifest = Manifest(
        name=name, grid="cpu-default", probe_sets={"mlp": {"mlp-v1/probes-v1/pool": 4, "mlp-v1/probes-v1/fresh": 4}}
    )
    for cid, native in answers.items():
        ids = np.arange(native.shape[0], dtype=np.int32)
        runs = {}
        for run, probe_set in (("reference", "pool"), ("fresh", "fresh")):
            ref = write_shard(directory, Responses("mlp", f"mlp-v1/probes-v1/{probe_set}", ids, native, "float32"))
            runs[run] = RunRecord(shards={"mlp": ref}, provenance=provenance, seconds=0.1)
        platform = Platform.parse(cid)
        labels = {**platform_labels(platform, provenance), "hardware": f"{provenance['cpu_vendor']}-x86-avx2"}
        manifest.configs[cid] = ConfigRecord(platform=platform, labels=labels, runs=runs, source=name)
    save_manifest(directory, manifest)
    return directory


def _two_cpus(tmp_path: Path) -> Path:
    same = np.arange(12, dtype=np.float32).reshape(4, 3)
    amd_fp32, intel_fp32 = same + 0.5, same + 0.25  # fp32 through MKL: other bits on each vendor
    amd = _dataset(tmp_path, "amd", AMD, {"cpu:avx2/bf16/torch-eager": same, "cpu:native/fp32/torch-eager": amd_fp32})
    intel = _dataset(
        tmp_path, "intel", INTEL, {"cpu:avx2/bf16/torch-eager": same, "cpu:native/fp32/torch-eager": intel_fp32}
    )
    merge(tmp_path / "merged", [amd, intel])
    return tmp_path / "merged"


def test_merge_labels_from_provenance_and_shared_class_carries_both(tmp_path):
    ds = Dataset(_two_cpus(tmp_path))
    hardware = {cid: rec.labels["hardware"] for cid, rec in ds.manifest.configs.items()}
    assert hardware == {
        "cpu:avx2/bf16/torch-eager": "amd-epyc-x86-avx2",
        "cpu:native/fp32/torch-eager": "amd-epyc-x86-avx2",
        "intel:cpu:avx2/bf16/torch-eager": "intel-xeon-x86-avx2",
        "intel:cpu:native/fp32/torch-eager": "intel-xeon-x86-avx2",
    }
    classes = {cls.name: cls for cls in equivalence_classes(ds, "mlp")}
    assert sorted(classes) == [
        "cpu:avx2/bf16/torch-eager",
        "cpu:native/fp32/torch-eager",
        "intel:cpu:native/fp32/torch-eager",
    ]
    shared = classes["cpu:avx2/bf16/torch-eager"]
    assert shared.labels["hardware"] == "amd-epyc-x86-avx2|intel-xeon-x86-avx2"
    assert measured_vendors(ds, shared.members) == ["amd", "intel"]
    assert measured_on(ds, shared.members) == ["amd: AMD EPYC", "intel: Intel(R) Xeon(R) Processor"]
    assert measured_vendors(ds, classes["intel:cpu:native/fp32/torch-eager"].members) == ["intel"]
    assert classes["cpu:native/fp32/torch-eager"].labels["hardware"] == "amd-epyc-x86-avx2"


def test_platforms_shows_shared_and_vendor_specific_classes(tmp_path):
    merged = _two_cpus(tmp_path)
    out = tmp_path / "classes.json"
    run = CliRunner().invoke(app, ["platforms", "--dataset", str(merged), "--model", "mlp", "--json", str(out)])
    assert run.exit_code == 0, run.output
    assert "1 shared across vendors, 2 vendor-specific" in " ".join(run.output.split())
    rows = {r["class"]: r for r in json.loads(out.read_text())["classes"]}
    assert rows["cpu:avx2/bf16/torch-eager"]["shared_across_vendors"] is True
    assert rows["cpu:native/fp32/torch-eager"]["vendors"] == ["amd"]
    assert rows["intel:cpu:native/fp32/torch-eager"]["measured_on"] == ["intel: Intel(R) Xeon(R) Processor"]


def test_platforms_of_one_vendor_prints_as_before(tmp_path):
    amd = _dataset(tmp_path, "amd", AMD, {"cpu:avx2/bf16/torch-eager": np.ones((4, 3), dtype=np.float32)})
    run = CliRunner().invoke(app, ["platforms", "--dataset", str(amd), "--model", "mlp"])
    assert run.exit_code == 0, run.output
    assert "measured on" not in run.output and "shared across" not in run.output
