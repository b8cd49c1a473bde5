"""The ensemble sampler: N reverse-diffusion samples per slice, batched, reduced to a mean
probability, a label map and per-voxel uncertainty.

Speed decisions (documented because they change what is computed):
- the conditional U-Net runs once per slice; its prior and image features are reused by
  every step and every ensemble member;
- slices on which the prior finds no spine (fewer than ``min_pixels`` pixels above
  ``prior_threshold``: stray pixels on lateral slices, ribs) are not diffused: their
  probability is the prior's and their sample spread is 0;
- on the other slices the diffusion runs inside the bounding box of the prior's spine
  pixels plus ``margin`` pixels (the same box for the slices of one batch); outside it
  the prior's probability is kept and the spread is 0;
- ensemble members are stacked along the batch axis, so one network call serves all.
"""

from __future__ import annotations

import numpy as np
import torch

from ..networks.verdiff_net import Condition
from ..schedulers import randn_tensor


def foreground_probability(probability: np.ndarray) -> np.ndarray:
    """[.., classes, rows, cols] -> [.., rows, cols]: the probability that a pixel is any
    label, taken as its most likely label's (one channel: itself).

    Decided by measurement (session 12): the sum of a multi-class (``levels``) network's
    sigmoid channels, the right union if they were calibrated on disjoint masks, marks 18 %
    of a held-out MR volume's grid against 5 % for the maximum (each of five L1..L5 channels
    carries 0.04-0.06 of background probability early in training), and the union's Dice
    fell from 0.88 to 0.47; the maximum leaves a hole only where the network hesitates between
    two levels by halves, which it rarely does."""
    if probability.shape[-3] == 1:
        return probability[..., 0, :, :]
    return probability.max(axis=-3)


def labels_from_probability(probability: np.ndarray) -> np.ndarray:
    """[.., classes, rows, cols] -> label map: where the foreground probability
    (``foreground_probability``) is above 0.5, the most likely class, else 0."""
    if probability.shape[-3] == 1:  # binary models: the same map without an argmax over one class (seconds on a CT)
        return (probability[..., 0, :, :] > 0.5).astype(np.uint8)
    best = probability.argmax(axis=-3)
    return np.where(foreground_probability(probability) > 0.5, best + 1, 0).astype(np.uint8)


def _box(mask: np.ndarray, margin: int, multiple: int) -> tuple[slice, slice]:
    """Bounding box of a [rows, cols] mask grown by margin, sizes rounded up to ``multiple``."""
    rows, cols = np.nonzero(mask)
    out = []
    for idx, n in ((rows, mask.shape[0]), (cols, mask.shape[1])):
        lo, hi = max(int(idx.min()) - margin, 0), min(int(idx.max()) + 1 + margin, n)
        size = min(-(-(hi - lo) // multiple) * multiple, n)  # n is already a multiple (padded)
        lo = min(lo, n - size)
        out.append(slice(lo, lo + size))
    return out[0], out[1]


@torch.inference_mode()
def sample_ensemble(
    model,
    scheduler,
    images: torch.Tensor,
    ensemble: int,
    generator: torch.Generator,
    prior_threshold: float = 0.5,
    margin: int = 16,
    min_pixels: int = 64,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample a batch of padded slices [B, C, H, W] (C: 1, or a 2.5D card's slice and its
    neighbours, ``preparation.slice_channels``); returns (mean, std, diffused) with mean and std
    as [B, classes, H, W] numpy arrays. ``scheduler`` is a ``PriorShiftedScheduler`` whose
    ``set_timesteps`` has been called; the prior shift is explicit in its calls (``prior=``)."""
    condition = model.condition(images.contiguous(memory_format=torch.channels_last))
    # float32 whatever autocast computed the networks in: the diffusion maths stays exact.
    condition = Condition(*(x.float() for x in (condition.prior, condition.prior_logits, condition.image_features)))
    prior_probability = (condition.prior + 1) / 2
    mean = prior_probability.float().cpu().numpy().copy()
    std = np.zeros_like(mean)
    spine = (prior_probability > prior_threshold).any(dim=1).cpu().numpy()  # B, H, W
    active = np.flatnonzero(spine.sum(axis=(1, 2)) >= min_pixels)
    if active.size == 0:
        return mean, std, 0
    rows, cols = _box(spine[active].any(axis=0), margin, model.input_multiple)
    crop = Condition(*(x[active][:, :, rows, cols] for x in (condition.prior, condition.prior_logits, condition.image_features)))
    members = crop.repeat(ensemble).channels_last()
    prior = members.prior
    x = scheduler.initial_sample(randn_tensor(prior.shape, generator, prior.device, prior.dtype), prior=prior)
    x0 = x
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        eps = model(x, t_batch, members).float()
        step = scheduler.step(eps, int(t), x, generator, prior=prior)
        x, x0 = step.prev_sample, step.pred_original_sample
    samples = ((x0.clamp(-1, 1) + 1) / 2).float().cpu().numpy().reshape(ensemble, active.size, *x0.shape[1:])
    mean[active, :, rows, cols] = samples.mean(axis=0)
    std[active, :, rows, cols] = samples.std(axis=0)
    return mean, std, int(active.size)
