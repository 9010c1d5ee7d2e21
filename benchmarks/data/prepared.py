"""Datasets whose standardized splits are materialized from files the user has.

CIFAR, ImageNet, ILSVRC-10 and LFW-B cannot ship their index lists: the lists depend on
labels or file trees that are not in the repository (and may not be redistributed). For these
the checked-in `benchmarks/data/manifests/<name>.json` is a *recipe*: the seed, the procedure,
its parameters, the published checksums of the source files where there are any (CIFAR's md5s),
and optionally pinned split hashes. No index lists.

`dynbench data prepare NAME` applies the recipe to the user's files and writes the complete
manifest (index or file lists, their sha256, the sha256 of the recipe it came from, and where
the source files are) to `<data root>/<name>/manifest.json`. The procedure is deterministic, so
preparing twice gives byte-identical manifests.

Loading verifies the prepared manifest: that it was made from the current recipe, its
index-list hashes, the split sizes and any pinned split hashes the recipe holds, and the
source checksums. Where rebuilding the splits is cheap (CIFAR) it is redone on every load and
must give the same lists; `verify --full` does it for every dataset. A mismatch is always a
`ManifestMismatchError` naming the file and both hashes; nothing re-splits silently, and a
recipe change needs an explicit `prepare`.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data.base import (
    DatasetSource,
    FileCheck,
    check_rebuilt,
    checksum_files,
    data_roots,
)
from benchmarks.data.manifest import Manifest, SplitEntry, load_manifest, manifest_path
from benchmarks.errors import (
    ConfigError,
    DataNotFoundError,
    ManifestMismatchError,
    OutputError,
)
from benchmarks.io import atomic_write_text, canonical_json, confined_path, ensure_dir, sha256_bytes

MANIFEST_FILE = "manifest.json"


def recipe_sha256(recipe: Manifest) -> str:
    """sha256 of the recipe's canonical JSON (formatting of the file does not matter)."""
    return sha256_bytes(canonical_json(recipe.to_json()).encode("utf-8"))


def write_prepared_manifest(path: str | os.PathLike, manifest: Manifest) -> Path:
    """Compact canonical JSON: prepared manifests can hold millions of entries."""
    return atomic_write_text(path, canonical_json(manifest.to_json()) + "\n")


def per_class_parts(
    labels: np.ndarray, counts: list[int], seed: int, num_classes: int | None = None
) -> list[np.ndarray]:
    """Draw, from every class, `counts[0]` positions for part 0, `counts[1]` for part 1, ...

    Each class has its own random stream (numpy default_rng([seed, class])), so a change in
    one class's files never moves another class's samples. Returns sorted positions per part.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    need = sum(counts)
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        if len(members) < need:
            raise DataNotFoundError(
                f"class {cls} has {len(members)} images; the split recipe needs {need}"
            )
        order = np.random.default_rng([seed, cls]).permutation(members)
        start = 0
        for i, k in enumerate(counts):
            parts[i].append(order[start : start + k])
            start += k
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


class PreparedSource(DatasetSource):
    """A dataset whose split manifest `prepare` materializes under a data root.

    Subclasses name where the raw files may be (`raw_subdirs` of each data root, then
    `raw_system_dirs`), how to recognise them (`is_raw_present`), which files the manifest
    checksums (`raw_files`) and how to build the splits (`build_manifest`, from the raw folder).
    The folder that `locate` returns is the prepared folder `<data root>/<name>`.
    """

    raw_subdirs: tuple[str, ...] = ()
    raw_system_dirs: tuple[Path, ...] = ()
    #: rebuild the splits from the source files on every load (only where that is cheap)
    rederive_on_load: bool = False

    def __init__(self, recipe: Manifest | None = None):
        # Tests pass a recipe for their fixture files (whose checksums differ from the real ones).
        self._recipe = recipe

    # --- the recipe ------------------------------------------------------------------------
    def recipe(self) -> Manifest:
        return self._recipe if self._recipe is not None else load_manifest(manifest_path(self.name))

    def recipe_param(self, key: str) -> Any:
        recipe = self.recipe()
        if key not in recipe.extra:
            raise ConfigError(
                f"split recipe {recipe.path or '(given)'} of '{self.name}' has no 'extra.{key}'"
            )
        return recipe.extra[key]

    def split_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in (self.recipe().extra.get("split_counts") or {}).items()}

    def new_manifest(
        self,
        splits: dict[str, SplitEntry],
        source_files: dict[str, dict[str, str]],
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """A prepared manifest carrying the recipe's seed, procedure and sha256."""
        recipe = self.recipe()
        return Manifest(
            dataset=self.name,
            seed=recipe.seed,
            procedure=recipe.procedure,
            splits=splits,
            source_files=source_files,
            extra={
                **(extra or {}),
                "kind": "prepared",
                "recipe": f"{self.name}.json",
                "recipe_sha256": recipe_sha256(recipe),
            },
        )

    # --- raw source files ------------------------------------------------------------------
    def raw_candidate_dirs(self, data_root: str | os.PathLike | None = None) -> list[Path]:
        roots = data_roots(data_root)
        return [root / sub for root in roots for sub in self.raw_subdirs] + list(self.raw_system_dirs)

    @abstractmethod
    def is_raw_present(self, folder: Path) -> bool:
        """Whether `folder` holds this dataset's raw files (a cheap check)."""

    def find_raw(self, data_root: str | os.PathLike | None = None) -> Path | None:
        for folder in self.raw_candidate_dirs(data_root):
            if self.is_raw_present(folder):
                return folder
        return None

    def raw_files(self, raw: Path) -> dict[str, Path]:
        """Source files whose checksums the manifest records, keyed by manifest name."""
        return {}

    def download(self, workdir: Path) -> None:
        """Fetch the raw files into `workdir` (only datasets with a public download)."""
        raise DataNotFoundError(
            f"dataset '{self.name}' cannot be downloaded automatically.\n{self.info.how_to_get}"
        )

    # --- the prepared folder ---------------------------------------------------------------
    def candidate_dirs(self, data_root: str | os.PathLike | None = None) -> list[Path]:
        return [root / self.name for root in data_roots(data_root)]

    def is_present(self, folder: Path) -> bool:
        return (folder / MANIFEST_FILE).is_file()

    def locate(self, data_root: str | os.PathLike | None = None) -> Path:
        for folder in self.candidate_dirs(data_root):
            if self.is_present(folder):
                return folder
        raw = self.find_raw(data_root)
        if raw is not None:
            option = f" --data-root {data_root}" if data_root else ""
            raise DataNotFoundError(
                f"dataset '{self.name}': the source files are at {raw}, but the splits have not "
                f"been prepared yet. Run:\n  dynbench data prepare {self.name}{option}"
            )
        raise self.not_found_error(data_root)

    def not_found_error(self, data_root: str | os.PathLike | None = None) -> DataNotFoundError:
        prepared = "\n  ".join(str(p / MANIFEST_FILE) for p in self.candidate_dirs(data_root))
        raw_dirs = "\n  ".join(str(p) for p in self.raw_candidate_dirs(data_root))
        return DataNotFoundError(
            f"dataset '{self.name}' was not found. Looked for a prepared split manifest in:\n"
            f"  {prepared}\nand for the source files in:\n  {raw_dirs}\n{self.info.how_to_get}"
        )

    def manifest(self, folder: Path | None = None) -> Manifest:
        folder = self.locate() if folder is None else folder
        return load_manifest(folder / MANIFEST_FILE)

    def source_folder(self, folder: Path, manifest: Manifest) -> Path:
        """The raw folder a prepared manifest was made from (relative paths stay inside)."""
        recorded = manifest.extra.get("source_folder")
        if not isinstance(recorded, str) or not recorded:
            raise ConfigError(f"split manifest {manifest.path}: 'extra.source_folder' is missing")
        path = Path(recorded) if Path(recorded).is_absolute() else confined_path(folder, recorded)
        if not path.is_dir():
            raise DataNotFoundError(
                f"dataset '{self.name}': the source folder {path} named in {manifest.path} does "
                f"not exist. Put the files back, or run `dynbench data prepare {self.name}` again."
            )
        return path

    def source_files(self, folder: Path) -> dict[str, Path]:
        manifest = self.manifest(folder)
        return self.raw_files(self.source_folder(folder, manifest))

    def file_checks(self, folder: Path, manifest: Manifest) -> list[FileCheck]:
        raw = self.source_folder(folder, manifest)
        return self.raw_file_checks(raw, manifest.source_files)

    def raw_file_checks(self, raw: Path, records: dict[str, dict[str, str]]) -> list[FileCheck]:
        return checksum_files(self.raw_files(raw), raw, records)

    # --- verification ----------------------------------------------------------------------
    def verify(
        self,
        folder: Path,
        manifest: Manifest | None = None,
        *,
        full: bool = False,
        on_check: Callable[[FileCheck], None] | None = None,
    ) -> Manifest:
        manifest = manifest or self.manifest(folder)
        self.check_against_recipe(manifest)
        manifest.verify_index_lists()
        self._raise_on_failed_checks(folder, manifest, self.file_checks(folder, manifest), on_check)
        if full or self.rederive_on_load:
            rebuilt = self.build_manifest(self.source_folder(folder, manifest))
            check_rebuilt(manifest, rebuilt)
            check_rebuilt_sources(manifest, rebuilt)
        return manifest

    def check_against_recipe(self, manifest: Manifest) -> None:
        """The manifest must come from the current recipe and meet its sizes and pins."""
        recipe = self.recipe()
        where = manifest.path or f"prepared manifest of {self.name}"
        recipe_where = recipe.path or "the given recipe"
        if manifest.dataset != self.name:
            raise ManifestMismatchError(
                f"{where} is a manifest of '{manifest.dataset}', not of '{self.name}'"
            )
        recorded, expected = manifest.extra.get("recipe_sha256"), recipe_sha256(recipe)
        if recorded != expected:
            raise ManifestMismatchError(
                f"{where} was prepared from a recipe with sha256 {recorded}, but the recipe "
                f"{recipe_where} has sha256 {expected}. Run `dynbench data prepare {self.name}` "
                "to remake the splits from the current recipe."
            )
        for rel, record in recipe.source_files.items():
            if manifest.source_files.get(rel) != record:
                raise ManifestMismatchError(
                    f"{where} records {rel} as {manifest.source_files.get(rel)}, but the recipe "
                    f"{recipe_where} has {record}"
                )
        for name, count in self.split_counts().items():
            have = len(manifest.splits[name].indices) if name in manifest.splits else 0
            if have != count:
                raise ManifestMismatchError(
                    f"split '{name}' in {where} has {have} items, but the recipe {recipe_where} "
                    f"defines {count}. The source files are not the standard release."
                )
        for name, pinned in (recipe.extra.get("split_sha256") or {}).items():
            have = manifest.splits[name].sha256 if name in manifest.splits else "(no such split)"
            if have != pinned:
                raise ManifestMismatchError(
                    f"split '{name}' in {where} has index-list sha256 {have}, but the recipe "
                    f"{recipe_where} pins {pinned}"
                )

    # --- preparing -------------------------------------------------------------------------
    def writable_workdir(self, data_root: str | os.PathLike | None = None) -> Path:
        """`<root>/<name>` in the first data root that can be written (ImageNet is often read-only)."""
        problems = []
        for root in data_roots(data_root):
            try:
                return ensure_dir(root / self.name)
            except OutputError as exc:
                problems.append(str(exc))
        raise OutputError(f"cannot write the prepared splits of '{self.name}': " + "; ".join(problems))

    def materialize(self, raw: Path, workdir: Path) -> Manifest:
        """Build the manifest (and any derived files, written into `workdir`)."""
        return self.build_manifest(raw)

    def prepare(self, data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
        raw = self.find_raw(data_root)
        if raw is None:
            if not download:
                raise self.not_found_error(data_root)
            self.download(self.writable_workdir(data_root))
            raw = self.find_raw(data_root)
            if raw is None:
                raise DataNotFoundError(
                    f"dataset '{self.name}': the download finished but the files are not where "
                    f"expected.\n{self.info.how_to_get}"
                )
        # A corrupt or different copy is refused before anything is built from it.
        recipe = self.recipe()
        self._raise_on_failed_checks(
            raw, recipe, self.raw_file_checks(raw, recipe.source_files), None
        )
        workdir = self.writable_workdir(data_root)
        manifest = self.materialize(raw, workdir)
        raw_abs, work_abs = raw.resolve(), workdir.resolve()
        manifest.extra["source_folder"] = (
            raw_abs.relative_to(work_abs).as_posix() if raw_abs.is_relative_to(work_abs) else str(raw_abs)
        )
        self.check_against_recipe(manifest)
        write_prepared_manifest(workdir / MANIFEST_FILE, manifest)
        self.verify(workdir)
        return workdir


def check_rebuilt_sources(manifest: Manifest, rebuilt: Manifest) -> None:
    """Source records computed again from the files (file lists, crop caches) must agree."""
    where = manifest.path or f"manifest of {manifest.dataset}"
    for rel in sorted(set(manifest.source_files) | set(rebuilt.source_files)):
        have = (manifest.source_files.get(rel) or {}).get("digest", "(not recorded)")
        again = (rebuilt.source_files.get(rel) or {}).get("digest", "(not recorded)")
        if have != again:
            raise ManifestMismatchError(
                f"'{rel}' in {where} has digest {have}, but rebuilding from the source files "
                f"gives {again}. Run `dynbench data prepare {manifest.dataset}` again."
            )
