"""A compact training loop for Verdiff-Net on 2D sagittal slices (one process, CPU or CUDA).

Decisions: random crops biased towards the spine (70 % of crops are centred on a spine
pixel) so small batches see vertebrae; 20 % of slices drawn from anywhere, so the prior
learns to say "no spine" on lateral slices (ribs, organs); rotation +-15 degrees and a
random gamma as light augmentation; AdamW with a cosine-decayed learning rate of 1e-3
(the paper's 1e-4 is for 9000 steps at batch 1 on a GPU; a few thousand CPU steps need
a larger rate); gradient norm clipped to 1.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

from VerdiffSegmentLib.losses import verdiff_loss
from VerdiffSegmentLib.networks import Condition, VerdiffNet
from VerdiffSegmentLib.schedulers import PriorShiftedScheduler

from . import datasets
from .configs import MR_VALIDATION, RECIPES


def build_cases(model_name: str, data_root: Path, seed: int = 35, limit: int | None = None):
    """(train cases, validation description) for a bundled model's recipe."""
    recipe = RECIPES[model_name]
    sp, norm = recipe["spacing_mm"], recipe["normalisation"]
    if model_name == "verdiff-mr":
        folder = data_root / "mr-lumbar-vb3"
        subjects = sorted(p.name[:6] for p in folder.glob("VB3_*_img.nii.gz"))
        train = [s for s in subjects if s not in MR_VALIDATION][:limit]
        cases = [datasets.load_volume_case(folder / f"{s}_img.nii.gz", folder / f"{s}_seg.nii.gz", range(1, 6), sp, norm) for s in train]
        return cases, {"train": train, "validation": MR_VALIDATION}
    if model_name == "verdiff-xray":
        items = datasets.aasce_cases(data_root / "xray-aasce")
        order = np.random.default_rng(seed).permutation(len(items))
        n_val = len(items) // 10
        val = sorted(items[i][0] for i in order[:n_val])
        train_items = [items[i] for i in sorted(order[n_val:])][:limit]
        cases = [datasets.load_aasce_case(p, m, sp, norm) for _, p, m in train_items]
        return cases, {"train": [n for n, _, _ in train_items], "validation": val}
    if model_name == "verdiff-ct":
        chest = datasets.load_volume_case(data_root / "ct-chest/cxr_ct_int16.nii.gz", data_root / "ct-chest/mask.nii.gz", range(29, 47), sp, norm)
        centre = ct_validation_start(chest.masks)
        chest.images, chest.masks = chest.images[:centre], chest.masks[:centre]
        abdomen = datasets.load_volume_case(
            data_root / "ct-abdomen-small/example_ct.nii.gz", data_root / "ct-abdomen-small/example_ct_vertebrae.nii.gz", range(27, 34), sp, norm
        )
        return [chest, abdomen], {"train": ["ct-chest slices [0, %d)" % centre, "ct-abdomen-small example_ct"], "validation": ["ct-chest slices [%d, end)" % centre]}
    raise KeyError(model_name)


def ct_validation_start(masks: np.ndarray) -> int:
    """First held-out sagittal slice of the chest CT: the spine's median slice."""
    per_slice = masks.reshape(masks.shape[0], -1).sum(axis=1)
    cumulative = np.cumsum(per_slice)
    return int(np.searchsorted(cumulative, cumulative[-1] / 2))


class SliceSampler:
    """Random augmented crops from the cases' slices."""

    def __init__(self, cases, crop: int, seed: int):
        self.cases, self.crop = cases, crop
        self.rng = np.random.default_rng(seed)
        self.index = [(c, s) for c, case in enumerate(cases) for s in range(case.images.shape[0])]
        self.spine_index = [(c, s) for c, s in self.index if cases[c].masks[s].any()]

    def _crop(self, image, mask):
        h = self.crop
        image = np.pad(image, [(0, max(h - image.shape[0], 0)), (0, max(h - image.shape[1], 0))])
        mask = np.pad(mask, [(0, max(h - mask.shape[0], 0)), (0, max(h - mask.shape[1], 0))])
        if mask.any() and self.rng.random() < 0.7:
            rows, cols = np.nonzero(mask)
            k = self.rng.integers(len(rows))
            r0, c0 = rows[k] - h // 2, cols[k] - h // 2
        else:
            r0, c0 = self.rng.integers(0, image.shape[0] - h + 1), self.rng.integers(0, image.shape[1] - h + 1)
        r0 = int(np.clip(r0, 0, image.shape[0] - h))
        c0 = int(np.clip(c0, 0, image.shape[1] - h))
        return image[r0 : r0 + h, c0 : c0 + h], mask[r0 : r0 + h, c0 : c0 + h]

    def batch(self, size: int):
        images, masks = [], []
        for _ in range(size):
            pool = self.spine_index if self.rng.random() < 0.8 else self.index
            c, s = pool[self.rng.integers(len(pool))]
            image, mask = self.cases[c].images[s], self.cases[c].masks[s]
            if self.rng.random() < 0.5:
                angle = self.rng.uniform(-15, 15)
                image = ndi.rotate(image, angle, reshape=False, order=1, mode="nearest")
                mask = ndi.rotate(mask, angle, reshape=False, order=0, mode="constant")
            image, mask = self._crop(image, mask)
            image = np.clip(image, 0, 1) ** self.rng.uniform(0.7, 1.5)
            images.append(image)
            masks.append(mask)
        to_tensor = lambda xs: torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))  # noqa: E731
        return to_tensor(images), to_tensor(masks)


def train(model_name: str, data_root: Path, out_dir: Path, steps: int = 1500, batch_size: int = 8, crop: int = 160,
          lr: float = 1e-3, seed: int = 35, channels=(8, 16, 32, 64), device: str = "cpu", limit: int | None = None,
          init: Path | None = None) -> Path:
    """Train one bundled model's recipe; writes ``model.pt`` (a plain state dict), the split and a CSV log.
    ``init``: start from these weights (a second stage continuing an earlier run) instead of at random."""
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases, split = build_cases(model_name, data_root, seed, limit)
    (out_dir / "split.json").write_text(json.dumps(split, indent=1))
    sampler = SliceSampler(cases, crop, seed)
    model = VerdiffNet(channels=channels)
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    model = model.to(device)
    scheduler = PriorShiftedScheduler()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    with open(out_dir / "log.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "total", "simple", "bce", "prior", "seconds"])
        for step in range(1, steps + 1):
            image, mask = (x.to(device) for x in sampler.batch(batch_size))
            condition = model.condition(image)
            prior = condition.prior.detach()  # the shift is a fixed input of the diffusion, trained by its own loss
            t = torch.randint(0, scheduler.num_train_timesteps, (batch_size,), generator=generator).to(device)
            noise = torch.randn(mask.shape, generator=generator).to(device)
            x_t = scheduler.add_noise(2 * mask - 1, prior, noise, t)
            eps = model(x_t, t, Condition(prior, condition.prior_logits, condition.image_features))
            losses = verdiff_loss(eps, noise, scheduler.predict_x0(x_t, eps, prior, t), mask, condition.prior_logits)
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(f"loss is {losses['total'].item()} at step {step}")
            optimiser.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            if step % 25 == 0 or step == steps:
                row = [step] + [round(losses[k].item(), 5) for k in ("total", "simple", "bce", "prior")] + [round(time.time() - start, 1)]
                log.writerow(row)
                log_file.flush()
                print(*row, flush=True)
    path = out_dir / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path
