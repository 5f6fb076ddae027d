"""The shared shard store of a fleet collection: one dataset directory per machine kind, through fsspec.

    <store>/<kind>/dataset.json              the kind's manifest (the driver's alone to write)
    <store>/<kind>/shards/<sha>.parquet      content-addressed shards, uploaded by the tasks
    <store>/fleet-status.json                which (configuration, kind) is done, running or failed

A store is a local path (the default: each kind's directory is then a dataset `hspi` reads as it
is) or any fsspec URL (``file://``, ``s3://``, ``memory://``...).  Every write goes to a temporary
sibling that is moved into place, so a reader sees a whole file or none; every shard is hash-checked
before it is stored and again before the driver names it in a manifest.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hspi.dataset import FORMAT, MANIFEST, Manifest, ShardRef, decode_shard_table
from hspi.errors import CollectionError, ConfigError, DatasetError

STATUS = "fleet-status.json"


class StoreError(CollectionError):
    """The store could not be reached, read or written (names the store and the operation)."""


class ShardStore:
    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as exc:  # unknown protocol, or its package is not installed
            raise ConfigError(f"store {url!r}: {str(exc).splitlines()[0]}") from None
        self.root = root.rstrip("/")

    @property
    def task_url(self) -> str:
        """The store as the tasks must name it: a local path made absolute here (a Ray worker runs in
        another directory; on several machines a local path must be a mount they share)."""
        return self.root if is_local(self.url) else self.url

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def check_writable(self) -> None:
        """Write, read back and remove a probe file: an unreachable or read-only store fails here, before any task."""
        probe = self.path(f".hspi-probe-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"hspi")
            if self.fs.cat_file(probe) != b"hspi":
                raise OSError("a probe file read back other bytes than were written")
            self.fs.rm_file(probe)
        except Exception as exc:  # fsspec backends raise their own types; every one means the same here
            raise StoreError(f"store {self.url} is unreachable or not writable: {_one_line(exc)}") from None

    # --- writes ---------------------------------------------------------------------------------------------

    def _put_bytes(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        parent = path.rsplit("/", 1)[0]
        try:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        except Exception as exc:  # a full disk, a lost connection, a denied write
            try:
                if self.fs.exists(tmp):
                    self.fs.rm_file(tmp)
            except Exception:  # the store is already failing; the first error is the one to report
                pass
            raise StoreError(f"store {self.url}: writing {path} failed: {_one_line(exc)}") from None

    def put_shard(self, kind: str, ref: ShardRef, data: bytes, model: str) -> bool:
        """Store one shard's file once.  Returns False when an intact copy was already there (a shard that
        arrives twice, or another configuration of the same equivalence class); a corrupt copy is replaced."""
        decode_shard(data, ref, model, label=f"uploaded shard {ref.shard}")  # never store bytes that do not hash
        path = self.path(kind, "shards", f"{ref.shard}.parquet")
        if self._exists(path):
            try:
                self.verify_shard(kind, ref, model)
                return False
            except DatasetError:
                pass  # a torn or corrupt earlier copy: the good bytes replace it
        self._put_bytes(path, data)
        return True

    def save_manifest(self, kind: str, manifest: Manifest) -> None:
        text = json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True)
        self._put_bytes(self.path(kind, MANIFEST), text.encode("utf-8"))

    def save_status(self, status: dict[str, Any]) -> None:
        self._put_bytes(self.path(STATUS), json.dumps(status, indent=1, sort_keys=True).encode("utf-8"))

    # --- reads ----------------------------------------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except Exception as exc:
            raise StoreError(f"store {self.url}: cannot look up {path}: {_one_line(exc)}") from None

    def _read(self, path: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            raise DatasetError(f"store {self.url}: {path} is missing") from None
        except Exception as exc:
            raise StoreError(f"store {self.url}: reading {path} failed: {_one_line(exc)}") from None

    def verify_shard(self, kind: str, ref: ShardRef, model: str) -> None:
        """Read a stored shard back and check it decodes to the content its name hashes."""
        path = self.path(kind, "shards", f"{ref.shard}.parquet")
        decode_shard(self._read(path), ref, model, label=f"{self.url} {path}")

    def load_manifest(self, kind: str) -> Manifest | None:
        path = self.path(kind, MANIFEST)
        if not self._exists(path):
            return None
        try:
            manifest = Manifest.model_validate_json(self._read(path))
        except ValueError as exc:
            raise DatasetError(f"corrupt manifest {self.url} {path}: {str(exc).splitlines()[0]}") from None
        if manifest.format != FORMAT:
            raise DatasetError(f"{self.url} {path}: unsupported format {manifest.format!r} (this hspi reads {FORMAT})")
        return manifest

    def kinds(self) -> list[str]:
        """Machine kinds that have a manifest in the store."""
        try:
            entries = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
        except Exception as exc:
            raise StoreError(f"store {self.url}: listing failed: {_one_line(exc)}") from None
        names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if self._exists(self.path(n, MANIFEST)))

    def load_status(self) -> dict[str, Any]:
        path = self.path(STATUS)
        if not self._exists(path):
            return {"jobs": {}}
        try:
            return dict(json.loads(self._read(path)))
        except ValueError:
            raise DatasetError(f"store {self.url}: {path} is not JSON") from None


def decode_shard(data: bytes, ref: ShardRef, model: str, *, label: str) -> None:
    """Raise DatasetError unless `data` is a whole shard file whose content hashes to `ref`."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"corrupt or truncated shard {label}: {str(exc).splitlines()[0]}") from None
    decode_shard_table(table, ref, model, label=label)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def is_local(url: str) -> bool:
    """A plain path (no scheme): its kind directories are datasets hspi reads in place."""
    return "://" not in url or url.startswith("file://")
