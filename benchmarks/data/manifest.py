"""Split manifests: the checked-in definition of every standardized split.

A manifest is a small JSON file (`benchmarks/data/manifests/<dataset>.json`) that holds the
seed and procedure that made the splits, the index list of every split (indices into one of
the dataset's source pools, e.g. the official training set), the sha256 of each index list,
and the checksum of every source file. Loading a split verifies all of it; any mismatch is a
`ManifestMismatchError` naming the file and both hashes. Nothing ever re-splits silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.errors import ConfigError, ManifestMismatchError
from benchmarks.io import atomic_write_json, canonical_json, sha256_bytes

MANIFEST_DIR = Path(__file__).with_name("manifests")
SPLIT_NAMES = ("train", "val", "test")


def index_list_sha256(indices: list[int] | np.ndarray) -> str:
    """sha256 of an index list, computed over its canonical JSON text."""
    return sha256_bytes(canonical_json([int(i) for i in indices]).encode("ascii"))


@dataclass
class SplitEntry:
    pool: str
    indices: list[int]
    sha256: str

    @classmethod
    def build(cls, pool: str, indices: list[int] | np.ndarray) -> SplitEntry:
        indices = [int(i) for i in indices]
        return cls(pool=pool, indices=indices, sha256=index_list_sha256(indices))


@dataclass
class Manifest:
    """The parsed content of one manifest file."""

    dataset: str
    seed: int
    procedure: str
    splits: dict[str, SplitEntry]
    # relative file name -> {"algorithm": "sha256" | "md5", "digest": hex}
    source_files: dict[str, dict[str, str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "seed": self.seed,
            "procedure": self.procedure,
            "source_files": self.source_files,
            "extra": self.extra,
            "splits": {
                name: {
                    "pool": s.pool,
                    "count": len(s.indices),
                    "sha256": s.sha256,
                    "indices": s.indices,
                }
                for name, s in self.splits.items()
            },
        }

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_json())

    def verify_index_lists(self) -> None:
        """Recompute each split's index-list hash; raise on a mismatch."""
        where = self.path or f"manifest of {self.dataset}"
        for name, entry in self.splits.items():
            actual = index_list_sha256(entry.indices)
            if actual != entry.sha256:
                raise ManifestMismatchError(
                    f"split '{name}' in {where}: index list sha256 is {actual}, "
                    f"but the manifest records {entry.sha256}. The manifest was edited or "
                    f"corrupted; restore it from the repository (git checkout -- {where})."
                )
            if len(set(entry.indices)) != len(entry.indices):
                raise ManifestMismatchError(f"split '{name}' in {where} repeats indices")
        pools: dict[str, set[int]] = {}
        for name, entry in self.splits.items():
            seen = pools.setdefault(entry.pool, set())
            overlap = seen.intersection(entry.indices)
            if overlap:
                raise ManifestMismatchError(
                    f"split '{name}' in {where} overlaps another split of pool "
                    f"'{entry.pool}' ({len(overlap)} shared indices)"
                )
            seen.update(entry.indices)


def parse_manifest(data: dict[str, Any], path: Path | None = None) -> Manifest:
    where = path or "manifest"
    try:
        splits = {
            name: SplitEntry(pool=str(s["pool"]), indices=list(s["indices"]), sha256=str(s["sha256"]))
            for name, s in data["splits"].items()
        }
        return Manifest(
            dataset=str(data["dataset"]),
            version=int(data.get("version", 1)),
            seed=int(data["seed"]),
            procedure=str(data["procedure"]),
            splits=splits,
            source_files=dict(data.get("source_files", {})),
            extra=dict(data.get("extra", {})),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed split manifest {where}: missing or bad field {exc}") from exc


def load_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestMismatchError(f"split manifest {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"split manifest {path} is not valid JSON: {exc}") from exc
    return parse_manifest(data, path)


def manifest_path(dataset: str) -> Path:
    return MANIFEST_DIR / f"{dataset}.json"


def stratified_holdout(
    labels: np.ndarray, fraction_or_count: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(labels)-1 into (kept, held_out), stratified by label.

    The held-out part takes the same share of every class (rounded per class, largest
    remainders first, so the total is exact). Deterministic for a given seed.
    """
    labels = np.asarray(labels)
    n = len(labels)
    total = int(round(fraction_or_count * n)) if isinstance(fraction_or_count, float) else int(fraction_or_count)
    if not 0 < total < n:
        raise ValueError(f"hold-out size must be between 1 and {n - 1}, got {total}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * total / n
    take = np.floor(exact).astype(int)
    remainder = total - take.sum()
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:remainder]] += 1
    held: list[np.ndarray] = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(n), held_out)
    return kept, held_out
