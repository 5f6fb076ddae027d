"""Fleet collection: machine kinds, the shard store, the driver's merge, and a local Ray cluster end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hspi.collector.fleet import describe_failure, merge_result
from hspi.collector.fleet_kinds import isa_level, kinds_in_cluster, select_kinds
from hspi.collector.fleet_store import ShardStore, StoreError
from hspi.dataset import Manifest, ShardRef, load_manifest, write_shard
from hspi.errors import CollectionError, ConfigError, DatasetError
from hspi.platform import Platform
from hspi.responses import Responses

SMALL = ["--pool", "40", "--fresh", "24", "--replay", "32"]


def hspi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hspi", *args], capture_output=True, text=True, timeout=600, env=env or None
    )


def test_isa_level_is_the_newest_flag_present() -> None:
    assert isa_level(["sse4_2", "avx2", "avx512f", "avx512_bf16", "amx_bf16"]) == "amx"
    assert isa_level(["sse4_2", "avx2", "avx512f"]) == "avx512"
    assert isa_level(["sse4_2"]) == "sse42"


def test_kinds_come_from_node_resources() -> None:
    nodes = [
        {"CPU": 0.0},  # a head that advertises nothing runs nothing
        {"CPU": 2.0, "cpu-vendor:amd": 1.0, "isa:avx512_bf16": 1.0},
        {"CPU": 2.0, "cpu-vendor:amd": 1.0, "isa:avx512_bf16": 1.0},
        {"CPU": 8.0, "cpu-vendor:intel": 1.0, "isa:amx": 1.0, "GPU": 1.0, "accelerator_type:H200": 1.0},
    ]
    kinds = kinds_in_cluster(nodes)
    assert [k.name for k in kinds] == ["cpu-amd-avx512_bf16", "cpu-intel-amx", "gpu-H200"]
    amd = kinds[0]
    options = amd.task_options(Platform(threads=2))
    assert options["num_cpus"] == 2 and set(options["resources"]) == {"cpu-vendor:amd", "isa:avx512_bf16"}
    assert all(v < 1 for v in options["resources"].values())  # a label pins placement, it limits nothing
    assert kinds[2].task_options(Platform())["num_gpus"] == 1
    assert [k.name for k in select_kinds(kinds, "cpu", None)] == ["cpu-amd-avx512_bf16", "cpu-intel-amx"]
    with pytest.raises(ConfigError, match="'cpu-arm-sve' is not in the cluster"):
        select_kinds(kinds, "cpu", ["cpu-arm-sve"])
    with pytest.raises(ConfigError, match="no node of the cluster offers a cpu machine kind"):
        select_kinds(kinds_in_cluster(nodes[:1]), "cpu", None)


def _shard(tmp_path: Path, seed: int = 0) -> tuple[ShardRef, bytes]:
    rng = np.random.default_rng(seed)
    responses = Responses("mlp", "mlp/pool", np.arange(5, dtype=np.int32), rng.random((5, 3), np.float32), "float32")
    ref = write_shard(tmp_path, responses)
    return ref, (tmp_path / "shards" / f"{ref.shard}.parquet").read_bytes()


def test_store_keeps_a_shard_once_and_replaces_a_corrupt_copy(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "store"))
    store.check_writable()
    ref, data = _shard(tmp_path)
    assert store.put_shard("cpu-x", ref, data, "mlp") is True
    assert store.put_shard("cpu-x", ref, data, "mlp") is False  # arrived twice: stored once
    stored = tmp_path / "store" / "cpu-x" / "shards" / f"{ref.shard}.parquet"
    stored.write_bytes(data[: len(data) // 2])  # a torn earlier upload
    with pytest.raises(DatasetError, match="corrupt or truncated shard"):
        store.verify_shard("cpu-x", ref, "mlp")
    assert store.put_shard("cpu-x", ref, data, "mlp") is True
    assert stored.read_bytes() == data
    other_ref, other = _shard(tmp_path, seed=1)
    with pytest.raises(DatasetError, match="does not match its hash"):  # bytes that do not hash to their name
        store.put_shard("cpu-x", ref, other, "mlp")
    assert not list((tmp_path / "store" / "cpu-x" / "shards").glob("*.tmp"))


def test_store_through_an_fsspec_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ShardStore("relative/store").task_url == str(tmp_path / "relative" / "store")  # workers run elsewhere
    store = ShardStore("memory://hspi-test-store")
    assert store.task_url == "memory://hspi-test-store"
    store.check_writable()
    ref, data = _shard(tmp_path)
    store.put_shard("cpu-x", ref, data, "mlp")
    store.verify_shard("cpu-x", ref, "mlp")
    store.save_manifest("cpu-x", Manifest(name="cpu-x"))
    assert store.kinds() == ["cpu-x"]


def test_unreachable_and_unknown_stores_say_so(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StoreError, match="is unreachable or not writable"):
        ShardStore(str(tmp_path / "a-file" / "store")).check_writable()
    with pytest.raises(ConfigError, match="nosuchproto"):
        ShardStore("nosuchproto://bucket/x")


def test_merge_refuses_missing_corrupt_and_twice_arrived_results(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "store"))
    platform = Platform()
    manifest = Manifest(name="cpu-x", probe_sets={"mlp": {"mlp/pool": 5}})
    ref, data = _shard(tmp_path)
    record = {"shards": {"mlp": ref.model_dump()}, "provenance": {"cpu_vendor": "amd"}, "seconds": 1.0}
    result = {"runs": {run: record for run in ("reference", "replay", "fresh")}}
    with pytest.raises(DatasetError, match=r"cpu:native/fp32/torch-eager on cpu-x: not merged: .* is missing"):
        merge_result(store, "cpu-x", manifest, platform, ["mlp"], result)
    assert not manifest.configs
    store.put_shard("cpu-x", ref, data, "mlp")
    (tmp_path / "store" / "cpu-x" / "shards" / f"{ref.shard}.parquet").write_bytes(b"PAR1 not a shard")
    with pytest.raises(DatasetError, match="not merged: corrupt or truncated shard"):
        merge_result(store, "cpu-x", manifest, platform, ["mlp"], result)
    assert not manifest.configs and store.load_manifest("cpu-x") is None
    store.put_shard("cpu-x", ref, data, "mlp")
    no_fresh = {"runs": {run: record for run in ("reference", "replay")}}
    with pytest.raises(CollectionError, match="returned no fresh outputs of mlp"):
        merge_result(store, "cpu-x", manifest, platform, ["mlp"], no_fresh)
    merge_result(store, "cpu-x", manifest, platform, ["mlp"], result)
    saved = store.load_manifest("cpu-x")
    assert saved is not None and list(saved.configs) == [platform.id]
    assert saved.configs[platform.id].labels["hardware"].startswith("amd-x86-")
    with pytest.raises(CollectionError, match="a second result arrived"):
        merge_result(store, "cpu-x", manifest, platform, ["mlp"], result)


def test_failures_are_described_by_their_cause() -> None:
    from ray import exceptions as rx

    died = describe_failure(rx.WorkerCrashedError(), "cpu:native/fp32/torch-eager")
    assert "worker running it died" in died
    wrapped = rx.RayTaskError(
        "run_configuration",
        "Traceback ...",
        CollectionError("cpu:native/fp32/torch-eager: worker exited -9: no output"),
    )
    assert describe_failure(wrapped, "cpu:native/fp32/torch-eager") == "worker exited -9: no output"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["fleet", "collect", "--grid", "nope"], "unknown grid 'nope'"),
        (["fleet", "collect", "--grid", "cpu-smoke", "--store", "nosuchproto://b/x"], "store 'nosuchproto://b/x'"),
        (["fleet", "status", "--store", "nosuchproto://b/x"], "store 'nosuchproto://b/x'"),
        (["fleet", "collect", "--grid", "cpu-smoke", "--ray", "127.0.0.1:1"], "no Ray cluster at 127.0.0.1:1"),
        (["fleet", "collect", "--grid", "cpu-smoke", "--ray", "nohost"], "bad Ray address 'nohost'"),
    ],
)
def test_fleet_bad_input_is_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    if "--store" not in args:
        args = [*args, "--store", str(tmp_path / "store")]
    proc = hspi(*args)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_fleet_resources_are_measured_here() -> None:
    proc = hspi("fleet", "resources")
    assert proc.returncode == 0, proc.stderr
    labels = json.loads(proc.stdout)
    assert len(labels) == 2 and any(k.startswith("cpu-vendor:") for k in labels)


def _kill_first_fleet_worker(driver: subprocess.Popen, timeout_s: float = 300) -> None:
    """SIGKILL the first collection worker a fleet task starts (a descendant of this test's raylets)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and driver.poll() is None:
        for child in psutil.Process().children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "hspi.collector.worker" in cmdline and any("hspi-fleet-" in arg for arg in cmdline):
                child.kill()
                return
        time.sleep(0.05)
    raise AssertionError("no fleet worker process appeared")


@pytest.mark.slow
def test_ray_cluster_collects_the_same_shards_as_hspi_collect(tmp_path: Path) -> None:
    from hspi.collector.fleet_local import local_cluster

    local = tmp_path / "local"
    # two configurations at a time: `hspi collect --parallel` is checked against Ray here too (the
    # sequential path is test_cli_integration's)
    proc = hspi("collect", "--grid", "cpu-smoke", "--models", "mlp", "--out", str(local), *SMALL, "--parallel", "2")
    assert proc.returncode == 0, proc.stderr
    reference = load_manifest(local)
    store = tmp_path / "store"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["fleet", "collect", "--grid", "cpu-smoke", "--models", "mlp", "--store", str(store), *SMALL]
    with local_cluster(workers=2) as address:
        # a worker killed mid-run: its configuration is named as failed, the others are merged
        driver = subprocess.Popen(
            [sys.executable, "-m", "hspi", *args, "--ray", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        _kill_first_fleet_worker(driver)
        _, stderr = driver.communicate(timeout=600)
        assert driver.returncode == CollectionError.exit_code, stderr
        lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "1 of 4 configurations failed" in lines[0], stderr
        assert "worker exited -9" in lines[0] and "Traceback" not in stderr
        (killed,) = [cid for cid in reference.configs if f"{cid} on cpu-" in lines[0]]
        (kind,) = [p.name for p in store.iterdir() if p.is_dir()]
        assert set(load_manifest(store / kind).configs) == set(reference.configs) - {killed}
        status = hspi("fleet", "status", "--store", str(store))
        assert status.returncode == 0 and f"failed: {killed} on {kind}: worker exited -9" in status.stderr

        # the rerun resumes: only the failed configuration runs again
        first = load_manifest(store / kind)
        proc = hspi(*args, "--ray", address, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "1 configurations run, 3 already done, on 3 nodes" in proc.stdout
    fleet = load_manifest(store / kind)
    assert set(fleet.configs) == set(reference.configs)
    for cid, record in reference.configs.items():
        for run in ("reference", "replay", "fresh"):
            assert fleet.configs[cid].runs[run].shards == record.runs[run].shards, (cid, run)
        assert fleet.configs[cid].labels == record.labels
        if cid != killed:  # not run again
            assert fleet.configs[cid] == first.configs[cid]
    ours = {p.name: p.read_bytes() for p in (store / kind / "shards").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (local / "shards").iterdir()}
    assert ours == theirs  # every shard file bit-identical, none missing, none extra
    proc = hspi("dataset", "info", str(store / kind))
    assert proc.returncode == 0 and "all hashes verified" in proc.stdout
