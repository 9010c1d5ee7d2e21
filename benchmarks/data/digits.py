"""scikit-learn's bundled 8×8 handwritten digits: the embedded dataset, never downloaded.

1,797 images in one pool ("all"); there is no official test set, so the manifest fixes one:
a stratified 20% (360 images) is `test`, a stratified 270 of the rest is `val`, and the
remaining 1,167 are `train` (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.data.base import DatasetInfo, DatasetSource, TensorSplit, register_dataset
from benchmarks.data.manifest import Manifest, SplitEntry, stratified_holdout
from benchmarks.errors import DataNotFoundError

DIGITS_SEED = 0
DIGITS_TEST = 360
DIGITS_VAL = 270


@register_dataset
class Digits(DatasetSource):
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        input_shape=(1, 8, 8),
        description="scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test part)",
        how_to_get="digits ships with scikit-learn: `pip install scikit-learn`.",
        mean=(0.3053,),
        std=(0.3711,),
        class_names=tuple(str(i) for i in range(10)),
        embedded=True,
    )

    def candidate_dirs(self, data_root=None) -> list[Path]:
        try:
            import sklearn.datasets
        except ImportError as exc:  # pragma: no cover - sklearn is a dependency
            raise DataNotFoundError(self.info.how_to_get) from exc
        return [Path(sklearn.datasets.__file__).parent / "data"]

    def source_files(self, folder: Path) -> dict[str, Path]:
        return {"digits.csv.gz": folder / "digits.csv.gz"}

    def _pool(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        # Same parsing as sklearn.datasets.load_digits, but from the verified file itself.
        data = np.loadtxt(folder / "digits.csv.gz", delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8) / 16.0, data[:, -1].astype(np.int64)

    def build_manifest(self, folder: Path) -> Manifest:
        _, labels = self._pool(folder)
        rest, test = stratified_holdout(labels, DIGITS_TEST, DIGITS_SEED)
        train_pos, val_pos = stratified_holdout(labels[rest], DIGITS_VAL, DIGITS_SEED + 1)
        files = self.source_files(folder)
        from benchmarks.data.base import file_digest

        return Manifest(
            dataset=self.name,
            seed=DIGITS_SEED,
            procedure=(
                f"pool 'all' = the 1797 rows of sklearn's digits.csv.gz in file order. "
                f"test: stratified hold-out of {DIGITS_TEST} (numpy default_rng({DIGITS_SEED})); "
                f"val: stratified hold-out of {DIGITS_VAL} from the rest "
                f"(default_rng({DIGITS_SEED + 1})); train: the remainder."
            ),
            splits={
                "train": SplitEntry.build("all", rest[train_pos]),
                "val": SplitEntry.build("all", rest[val_pos]),
                "test": SplitEntry.build("all", test),
            },
            source_files={
                rel: {"algorithm": "sha256", "digest": file_digest(p, "sha256")}
                for rel, p in files.items()
            },
        )

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> TensorSplit:
        images, labels = self._pool(folder)
        idx = np.asarray(manifest.splits[split].indices, dtype=np.int64)
        x = torch.from_numpy(images[idx].astype(np.float32))[:, None]
        x = (x - self.info.mean[0]) / self.info.std[0]
        return TensorSplit(x, torch.from_numpy(labels[idx]), self.info, split)
