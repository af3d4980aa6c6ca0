"""Resumable on-disk feature store.

Layout of a store directory::

    meta.json                       what the features were made with (checked on open)
    ckpt_000/train.features.npy     (n, k) float32, memory-mapped, written chunk by chunk
    ckpt_000/train.q.npy            (n,) float32 out-to-loss terms
    ckpt_000/train.progress.json    chunk size and the chunks already written

A chunk is flushed to disk before it is recorded as done, and every JSON file is replaced
atomically, so an interrupted run resumes at the first chunk not recorded and a crash never
corrupts finished work.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trak_engine.errors import ConfigMismatchError

logger = logging.getLogger(__name__)

ChunkFn = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
Progress = Callable[[int, int], None]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically."""
    write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode())


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Save an array in .npy format atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


def describe_differences(
    stored: dict[str, Any], current: dict[str, Any], prefix: str = ""
) -> list[str]:
    """List 'field: stored X, now Y' for every differing (nested) field."""
    diffs = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
    return diffs


class FeatureStore:
    """Features of several checkpoints and splits under one directory.

    Args:
        root: the store directory (created if missing).
        meta: what the features are made with: the feature config, model fingerprint, grad
            dimension, projector backend, versions. ``meta["splits"]`` maps split name to
            ``{"n": ..., "fingerprint": ...}`` and ``meta["checkpoints"]`` lists checkpoint
            fingerprints. Fields other than splits and checkpoints must equal the stored ones;
            splits and checkpoints may be added but not changed.

    Raises:
        ConfigMismatchError: the directory holds features made otherwise; names each field.
    """

    def __init__(self, root: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = self._open(meta)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> FeatureStore:
        """Open an existing store with the metadata it was made with."""
        meta_path = Path(root) / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no feature store at {root} (meta.json is missing)")
        return cls(root, json.loads(meta_path.read_text()))

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def _open(self, meta: dict[str, Any]) -> dict[str, Any]:
        if not self.meta_path.exists():
            write_json_atomic(self.meta_path, meta)
            return meta
        stored = json.loads(self.meta_path.read_text())
        fixed = {k: v for k, v in stored.items() if k not in ("splits", "checkpoints", "versions")}
        now = {k: v for k, v in meta.items() if k not in ("splits", "checkpoints", "versions")}
        diffs = describe_differences(fixed, now)
        for name, split in meta.get("splits", {}).items():
            old = stored.get("splits", {}).get(name)
            if old is not None and old != split:
                diffs += describe_differences(old, split, f"splits.{name}.")
        old_ckpts, new_ckpts = stored.get("checkpoints", []), meta.get("checkpoints", [])
        for m, (a, b) in enumerate(zip(old_ckpts, new_ckpts, strict=False)):
            if a != b:
                diffs.append(f"checkpoints[{m}]: stored weights {a[:12]}, now {b[:12]}")
        if diffs:
            raise ConfigMismatchError(
                f"the feature store at {self.root} was made with something else: "
                + "; ".join(diffs)
                + ". Use another workdir, or delete that directory to recompute."
            )
        merged = dict(stored)
        merged["splits"] = {**stored.get("splits", {}), **meta.get("splits", {})}
        longer = new_ckpts if len(new_ckpts) > len(old_ckpts) else old_ckpts
        merged["checkpoints"] = list(longer)
        merged["versions"] = meta.get("versions", stored.get("versions"))
        if merged != stored:  # opening a store as it is writes nothing (read-only dirs work)
            write_json_atomic(self.meta_path, merged)
        return merged

    def path(self, checkpoint: int, split: str, kind: str = "features") -> Path:
        """Path of ``features``, ``q`` or ``progress`` for a checkpoint and split."""
        suffix = "json" if kind == "progress" else "npy"
        return self.root / f"ckpt_{checkpoint:03d}" / f"{split}.{kind}.{suffix}"

    def _progress(self, checkpoint: int, split: str) -> dict[str, Any] | None:
        path = self.path(checkpoint, split, "progress")
        return json.loads(path.read_text()) if path.exists() else None

    def exists(self, checkpoint: int, split: str) -> bool:
        """True when every chunk of this checkpoint and split has been written."""
        prog = self._progress(checkpoint, split)
        return prog is not None and len(prog["done"]) == prog["n_chunks"]

    def load(self, checkpoint: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Read-only memory maps ``(features (n, k) float32, q (n,) float32)``."""
        if not self.exists(checkpoint, split):
            raise FileNotFoundError(
                f"features of checkpoint {checkpoint}, split {split!r} are not complete in "
                f"{self.root}; compute them first (featurize)"
            )
        feats = np.load(self.path(checkpoint, split), mmap_mode="r")
        q = np.load(self.path(checkpoint, split, "q"), mmap_mode="r")
        return feats, q

    def compute(
        self,
        checkpoint: int,
        split: str,
        n: int,
        k: int,
        chunk_fn: ChunkFn,
        chunk_size: int,
        progress: Progress | None = None,
    ) -> None:
        """Fill the features of one checkpoint and split, resuming where a run stopped.

        Args:
            n: number of examples; k: feature dimension.
            chunk_fn: ``chunk_fn(start, stop)`` returns ``((stop-start, k) float32,
                (stop-start,) float32)`` features and out-to-loss terms.
            chunk_size: rows per chunk (a resumed run keeps the stored chunk size).
            progress: called with (rows done, n) after each chunk.
        """
        prog = self._progress(checkpoint, split)
        if prog is None:
            prog = {"n": n, "k": k, "chunk_size": chunk_size, "n_chunks": -(-n // chunk_size)}
            prog["done"] = []
            self._allocate(checkpoint, split, n, k)
            write_json_atomic(self.path(checkpoint, split, "progress"), prog)
        elif (prog["n"], prog["k"]) != (n, k):
            raise ConfigMismatchError(
                f"stored progress of checkpoint {checkpoint}, split {split!r} is for "
                f"n={prog['n']}, k={prog['k']}; now n={n}, k={k}"
            )
        feats = np.load(self.path(checkpoint, split), mmap_mode="r+")
        q = np.load(self.path(checkpoint, split, "q"), mmap_mode="r+")
        size, done = prog["chunk_size"], set(prog["done"])
        if done:
            logger.info(
                "resuming %s/%s: %d of %d chunks done",
                checkpoint,
                split,
                len(done),
                prog["n_chunks"],
            )
        for c in range(prog["n_chunks"]):
            if c in done:
                continue
            start, stop = c * size, min(n, (c + 1) * size)
            chunk_feats, chunk_q = chunk_fn(start, stop)
            feats[start:stop], q[start:stop] = chunk_feats, chunk_q
            feats.flush()
            q.flush()
            done.add(c)
            prog["done"] = sorted(done)
            write_json_atomic(self.path(checkpoint, split, "progress"), prog)
            if progress is not None:
                progress(min(n, len(done) * size), n)
        del feats, q

    def _allocate(self, checkpoint: int, split: str, n: int, k: int) -> None:
        for kind, shape in (("features", (n, k)), ("q", (n,))):
            path = self.path(checkpoint, split, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            del arr
            os.replace(tmp, path)
