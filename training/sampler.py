"""Random augmented crops from the training cases' sagittal slices.

Decisions (the bundled recipes' sampling, kept): 80 % of samples come from slices that
show spine and 20 % from any slice, so the prior also learns to say "no spine" on lateral
slices (ribs, organs) while slices without spine are sampled at a lower rate; 70 % of
crops are centred on a random spine pixel so small batches see vertebrae; slices
smaller than the crop are padded with 0 (background).

Reproducibility and sharding: the sampler's one generator draws a seed per sample of the
*global* batch; each sample is then built from its own generator. Every rank draws the
same seeds and builds only its shard, so ranks see different samples, the union of the
shards is exactly the batch one process would draw, and the sampler's whole state is its
generator's (saved in checkpoints).
"""

from __future__ import annotations

import numpy as np
import torch

from .augment import Augmentation

SPINE_SLICE_FRACTION = 0.8
SPINE_CENTRED_CROP_FRACTION = 0.7


class SliceSampler:
    """Args: cases (``datasets.Case``), crop size in pixels, seed, augmentation, number of
    product labels (mask channels: label k is channel k-1)."""

    def __init__(self, cases, crop: int, seed: int, augmentation: Augmentation, num_classes: int = 1):
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.crop, self.augmentation, self.num_classes = cases, crop, augmentation, num_classes
        self.rng = np.random.default_rng(seed)
        self.index = [(c, s) for c, case in enumerate(cases) for s in range(case.images.shape[0])]
        self.spine_index = [(c, s) for c, s in self.index if cases[c].labels[s].any()] or self.index

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def _crop(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        h = self.crop
        pad = [(0, max(h - image.shape[0], 0)), (0, max(h - image.shape[1], 0))]
        image, labels = np.pad(image, pad), np.pad(labels, pad)
        if labels.any() and rng.random() < SPINE_CENTRED_CROP_FRACTION:
            rows, cols = np.nonzero(labels)
            k = rng.integers(len(rows))
            r0, c0 = rows[k] - h // 2, cols[k] - h // 2
        else:
            r0, c0 = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - h + 1)
        r0 = int(np.clip(r0, 0, image.shape[0] - h))
        c0 = int(np.clip(c0, 0, image.shape[1] - h))
        return image[r0 : r0 + h, c0 : c0 + h], labels[r0 : r0 + h, c0 : c0 + h]

    def sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop: image [1, crop, crop] and one-hot masks [classes, crop, crop]."""
        rng = np.random.default_rng(seed)
        pool = self.spine_index if rng.random() < SPINE_SLICE_FRACTION else self.index
        c, s = pool[rng.integers(len(pool))]
        image, labels = self.augmentation.spatial(self.cases[c].images[s], self.cases[c].labels[s], rng)
        image, labels = self._crop(image, labels, rng)
        image = self.augmentation.intensity(image, rng)
        masks = labels[None] == np.arange(1, self.num_classes + 1, dtype=labels.dtype)[:, None, None]
        return image[None].astype(np.float32), masks.astype(np.float32)

    def batch(self, global_size: int, shard: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the seeds of a global batch (advancing the state identically on every rank)
        and build the samples of ``shard``: (images [B, 1, crop, crop], masks [B, classes, crop, crop])."""
        seeds = self.rng.integers(0, 2**63, size=global_size)
        images, masks = zip(*(self.sample(int(seed)) for seed in seeds[shard]))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))
