"""LFW-B (D2NN, Liu & Deng 2018): faces vs background crops built from Labeled Faces in the Wild.

Source: an LFW image folder, `<person>/<person>_NNNN.jpg`, 250×250 (the original `lfw`, or
`lfw-deepfunneled` / `lfw_funneled`), found in a data root directly or under `lfw-py/` (the
torchvision layout), or in scikit-learn's `~/scikit_learn_data/lfw_home/`. LFW is not
downloaded automatically.

Construction (all parameters are in the checked-in recipe, `manifests/lfw-b.json`):

- LFW images are centred on the face the Viola-Jones detector found, so the face crop is one
  fixed box, the central 120×120 square (x0, y0, x1, y1) = (65, 65, 185, 185); it covers
  about the region scikit-learn's `fetch_lfw_people` crops by default (rows 70-195, columns
  78-172). Label 1.
- Background crops: 10 per image, random squares of side 40-125 px placed uniformly in the
  image, kept only if their IoU with the face box is < 0.3 (rejection sampling). Label 0.
  Each image draws its boxes from its own stream, numpy default_rng([seed, image index]).
- Every crop is resized to 32×32 RGB (PIL bilinear).
- Splits are made by source image, so all 11 crops of an image are in one split: 1,000 images
  (11,000 crops) are `val`, 2,000 images (22,000 crops) are `test`, as in the paper, and the
  other 10,233 images (112,563 crops) are `train`. About 13k faces and 132k backgrounds.
- Known limitation: a background crop can contain a second person's face; nothing checks.

`dynbench data prepare lfw-b` writes the crops to `<data root>/lfw-b/crops-32x32.npy` (uint8
N×32×32×3) and the manifest with every crop box to `<data root>/lfw-b/manifest.json`. Loading
needs only these two files and checks the crop file's sha256; `verify --full` rebuilds all
crops from LFW and compares. The metric is F1 on the face class.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.data.base import DatasetInfo, FileCheck, TensorSplit, file_digest, register_dataset
from benchmarks.data.manifest import Manifest, SplitEntry
from benchmarks.data.prepared import PreparedSource
from benchmarks.errors import ConfigError, DataNotFoundError
from benchmarks.io import atomic_path

CROP_SIZE = 32
#: content digest of the LFW folder: sha256 of "<relative path>\t<sha256 of the file>\n" per image
CONTENT_ALGORITHM = "filecontent-sha256"


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def sample_background_boxes(
    rng: np.random.Generator,
    count: int,
    image_size: tuple[int, int],
    face_box: tuple[int, int, int, int],
    size_range: tuple[int, int],
    max_iou: float,
    max_rounds: int = 100,
) -> np.ndarray:
    """`count` random square boxes (rows x0, y0, x1, y1) with IoU < `max_iou` to the face box.

    Rejection sampling, vectorized: candidates are drawn in rounds of 8×`count` (side, then
    x0, then y0) and the first `count` accepted, in draw order, are kept.
    """
    width, height = image_size
    low, high = size_range
    if not 0 < low <= high <= min(width, height):
        raise ConfigError(f"background crop sizes {size_range} do not fit a {width}x{height} image")
    fx0, fy0, fx1, fy1 = face_box
    face_area = (fx1 - fx0) * (fy1 - fy0)
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        n = 8 * count
        side = rng.integers(low, high + 1, size=n)
        x0 = rng.integers(0, width - side + 1)
        y0 = rng.integers(0, height - side + 1)
        boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1)
        w = np.clip(np.minimum(boxes[:, 2], fx1) - np.maximum(boxes[:, 0], fx0), 0, None)
        h = np.clip(np.minimum(boxes[:, 3], fy1) - np.maximum(boxes[:, 1], fy0), 0, None)
        inter = w * h
        iou = inter / (side * side + face_area - inter)
        good = boxes[iou < max_iou][: count - have]
        kept.append(good)
        have += len(good)
        if have == count:
            return np.concatenate(kept).astype(np.int64)
    raise ConfigError(
        f"could not place {count} background crops of side {size_range} with IoU < {max_iou} "
        f"to the face box {face_box}"
    )


def list_lfw_images(folder: Path) -> list[str]:
    """'<person>/<file>.jpg' of every image, sorted."""
    images = []
    with os.scandir(folder) as people:
        for person in sorted(e.name for e in people if e.is_dir() and not e.name.startswith(".")):
            with os.scandir(folder / person) as it:
                images += sorted(
                    f"{person}/{e.name}" for e in it if e.is_file() and e.name.lower().endswith(".jpg")
                )
    return images


class _HashWriter:
    """A write-only file object that hashes what is written (np.save's bytes, unsaved)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


def npy_sha256(array: np.ndarray) -> str:
    writer = _HashWriter()
    np.lib.format.write_array(writer, array, allow_pickle=False)
    return writer.digest.hexdigest()


@register_dataset
class LFWB(PreparedSource):
    info = DatasetInfo(
        name="lfw-b",
        num_classes=2,
        input_shape=(3, CROP_SIZE, CROP_SIZE),
        description=(
            "LFW-B (D2NN): 32x32 face (label 1) vs background (label 0) crops from Labeled Faces "
            "in the Wild; 11k val / 22k test crops"
        ),
        how_to_get=(
            "LFW is not downloaded automatically. Get lfw.tgz (or lfw-deepfunneled.tgz) from the\n"
            "LFW site (http://vis-www.cs.umass.edu/lfw/) or a mirror, extract it to\n"
            "<data-root>/lfw/<person>/<person>_NNNN.jpg, then run `dynbench data prepare lfw-b`."
        ),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        class_names=("background", "face"),
        metric="f1",
    )
    raw_subdirs = (
        "lfw",
        "lfw-deepfunneled",
        "lfw_funneled",
        "lfw-py/lfw",
        "lfw-py/lfw-deepfunneled",
        "lfw-py/lfw_funneled",
    )

    def raw_candidate_dirs(self, data_root=None) -> list[Path]:
        # scikit-learn's fetch_lfw_people cache, resolved now (HOME may change in tests).
        sklearn_home = Path("~/scikit_learn_data/lfw_home").expanduser()
        return super().raw_candidate_dirs(data_root) + [
            sklearn_home / "lfw_funneled",
            sklearn_home / "lfw",
        ]

    def is_raw_present(self, folder: Path) -> bool:
        return folder.is_dir() and next(folder.glob("*/*.jpg"), None) is not None

    # --- the recipe's parameters -----------------------------------------------------------
    def params(self) -> dict[str, Any]:
        p = {k: self.recipe_param(k) for k in (
            "face_box", "image_size", "crop_size", "backgrounds_per_image",
            "background_size", "max_iou", "val_images", "test_images",
        )}
        if int(p["crop_size"]) != CROP_SIZE:
            raise ConfigError(f"lfw-b recipe: crop_size must be {CROP_SIZE}, got {p['crop_size']}")
        return p

    def crop_file(self) -> str:
        return f"crops-{CROP_SIZE}x{CROP_SIZE}.npy"

    # --- building --------------------------------------------------------------------------
    def crop_boxes(self, n_images: int) -> np.ndarray:
        """Rows (image, x0, y0, x1, y1, label), image-major: the face, then its backgrounds."""
        p, seed = self.params(), self.recipe().seed
        face = tuple(int(v) for v in p["face_box"])
        rows = []
        for i in range(n_images):
            rng = np.random.default_rng([seed, i])
            boxes = sample_background_boxes(
                rng,
                int(p["backgrounds_per_image"]),
                tuple(p["image_size"]),
                face,
                tuple(p["background_size"]),
                float(p["max_iou"]),
            )
            block = np.empty((1 + len(boxes), 6), dtype=np.int64)
            block[:, 0] = i
            block[0, 1:5], block[0, 5] = face, 1
            block[1:, 1:5], block[1:, 5] = boxes, 0
            rows.append(block)
        return np.concatenate(rows) if rows else np.zeros((0, 6), np.int64)

    def split_images(self, n_images: int) -> dict[str, np.ndarray]:
        p = self.params()
        n_val, n_test = int(p["val_images"]), int(p["test_images"])
        if n_val + n_test >= n_images:
            raise DataNotFoundError(
                f"lfw-b needs more than {n_val + n_test} LFW images, found {n_images}"
            )
        order = np.random.default_rng(self.recipe().seed).permutation(n_images)
        return {
            "train": np.sort(order[n_val + n_test :]),
            "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val : n_val + n_test]),
        }

    def render_crops(self, raw: Path, images: list[str], boxes: np.ndarray) -> tuple[np.ndarray, str]:
        """Decode every image once and cut its crops; also the content digest of the images."""
        from PIL import Image

        size = tuple(int(v) for v in self.params()["image_size"])
        out = np.empty((len(boxes), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
        content = hashlib.sha256()
        starts = np.searchsorted(boxes[:, 0], np.arange(len(images) + 1))
        progress = tqdm(images, desc="lfw-b: cutting crops", unit="image", disable=None, leave=False)
        for i, rel in enumerate(progress):
            data = (raw / rel).read_bytes()
            content.update(f"{rel}\t{hashlib.sha256(data).hexdigest()}\n".encode())
            with Image.open(io.BytesIO(data)) as img:
                if img.size != size:
                    raise DataNotFoundError(
                        f"{raw / rel} is {img.size[0]}x{img.size[1]}; LFW images are {size[0]}x{size[1]}"
                    )
                rgb = img.convert("RGB")
            for row in range(starts[i], starts[i + 1]):
                box = tuple(int(v) for v in boxes[row, 1:5])
                crop = rgb.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR, box=box)
                out[row] = np.asarray(crop, dtype=np.uint8)
        return out, content.hexdigest()

    def build(self, raw: Path) -> tuple[Manifest, np.ndarray]:
        images = list_lfw_images(raw)
        boxes = self.crop_boxes(len(images))
        per_image = 1 + int(self.params()["backgrounds_per_image"])
        crops, content = self.render_crops(raw, images, boxes)
        splits = {}
        for name, chosen in self.split_images(len(images)).items():
            index = (chosen[:, None] * per_image + np.arange(per_image)[None, :]).reshape(-1)
            splits[name] = SplitEntry.build("crops", index)
        manifest = self.new_manifest(
            splits=splits,
            source_files={
                self.crop_file(): {"algorithm": "sha256", "digest": npy_sha256(crops)},
                "lfw/": {"algorithm": CONTENT_ALGORITHM, "digest": content},
            },
            extra={
                "images": images,
                "crops": boxes.tolist(),
                "crop_columns": ["image", "x0", "y0", "x1", "y1", "label"],
            },
        )
        return manifest, crops

    def build_manifest(self, folder: Path) -> Manifest:
        return self.build(folder)[0]

    def materialize(self, raw: Path, workdir: Path) -> Manifest:
        manifest, crops = self.build(raw)
        self.check_against_recipe_counts(manifest)
        with atomic_path(workdir / self.crop_file()) as tmp:
            with open(tmp, "wb") as fh:
                np.lib.format.write_array(fh, crops, allow_pickle=False)
        return manifest

    def check_against_recipe_counts(self, manifest: Manifest) -> None:
        # Fail before writing 450 MB of crops for a non-standard LFW copy.
        for name, count in self.split_counts().items():
            have = len(manifest.splits[name].indices)
            if have != count:
                raise DataNotFoundError(
                    f"lfw-b: split '{name}' would have {have} crops, the recipe defines {count}; "
                    f"the LFW folder has {len(manifest.extra['images'])} images, LFW has 13233"
                )

    # --- loading ---------------------------------------------------------------------------
    def file_checks(self, folder: Path, manifest: Manifest) -> list[FileCheck]:
        # Loading needs only the crop cache; the LFW content digest is checked by --full.
        checks = []
        for rel, record in manifest.source_files.items():
            if record["algorithm"] == CONTENT_ALGORITHM:
                continue
            if "/" in rel or rel.startswith("."):
                raise ConfigError(f"split manifest {manifest.path}: bad crop file name '{rel}'")
            path = folder / rel
            actual = file_digest(path, record["algorithm"]) if path.is_file() else None
            checks.append(FileCheck(rel, path, record["algorithm"], record["digest"], actual))
        return checks

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> TensorSplit:
        crops = np.load(folder / self.crop_file(), mmap_mode="r", allow_pickle=False)
        boxes = np.asarray(manifest.extra["crops"], dtype=np.int64)
        if crops.shape != (len(boxes), CROP_SIZE, CROP_SIZE, 3):
            raise DataNotFoundError(f"{folder / self.crop_file()} has shape {crops.shape}, expected {len(boxes)} crops")
        idx = np.asarray(manifest.splits[split].indices, dtype=np.int64)
        x = torch.from_numpy(np.ascontiguousarray(crops[idx])).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - 0.5) / 0.5
        return TensorSplit(x.contiguous(), torch.from_numpy(boxes[idx, 5]), self.info, split)
