"""Seeded batch iteration and batch-level augmentation.

The order of every epoch is a function of (seed, stage, epoch) alone, so a run resumed after
a kill sees exactly the batches it would have seen. In-memory splits (`TensorSplit`) are
batched by slicing their tensors, which is faster than a per-sample DataLoader; other
datasets go through a DataLoader with the same seeded order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from benchmarks.data import TensorSplit


def epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1))
    return generator


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """`crop_flip`: pad 4 and random-crop back, then random horizontal flip (He et al.);
    `flip`: flip only; `none`: unchanged. Randomness comes from `generator` only."""
    if kind == "none":
        return images
    n, _, h, w = images.shape
    device = images.device  # the draws come from the CPU generator wherever the images are
    if kind == "crop_flip":
        pad = 4
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).to(device)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).to(device)
        batch_index = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel_index = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        images = padded[batch_index, channel_index, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
    return images


def train_batches(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    augment: str = "none",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of one epoch; the last partial batch is dropped when it would hold
    a single sample (BatchNorm cannot train on one). `shard=(rank, world)` splits the
    permutation for distributed training."""
    n = len(dataset)
    order = torch.randperm(n, generator=generator)
    rank, world = shard
    if world > 1:
        usable = (n // world) * world
        order = order[:usable][rank::world]
    if isinstance(dataset, TensorSplit) and dataset.transform is None:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2 and start > 0:
                break
            index = index.to(dataset.images.device)
            images = augment_batch(dataset.images[index], augment, generator)
            yield images, dataset.targets[index]
        return
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False)
    for start, (images, targets) in zip(range(0, len(order), batch_size), loader, strict=True):
        if len(targets) < 2 and start > 0:
            break
        yield augment_batch(images, augment, generator), targets


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in its manifest order, in batches."""
    if isinstance(dataset, TensorSplit) and dataset.transform is None:
        for start in range(0, len(dataset), batch_size):
            yield dataset.images[start : start + batch_size], dataset.targets[start : start + batch_size]
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


def num_train_batches(n: int, batch_size: int, world: int = 1) -> int:
    """How many batches `train_batches` yields for a split of n samples."""
    per_rank = n // world if world > 1 else n
    full, rest = divmod(per_rank, batch_size)
    if full == 0:
        return 1 if per_rank else 0
    return full + (1 if rest >= 2 else 0)
