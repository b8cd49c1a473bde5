"""Patch-based sliding-window inference over a whole image or volume (for 3D networks).

A network trained on patches (ImgX-DiffSeg's 3D variant) predicts a volume window by
window: windows of ``patch_size`` overlap by ``overlap`` of their size, the last one on
each axis is moved back to end flush with the volume (so every voxel is covered and no
window reaches outside), and the predictions are blended by a weighted average. The
default Gaussian weight trusts a window's centre more than its edges (where context is
cut off); it is floored above 0 so every covered voxel has a positive total weight.
A volume smaller than the patch on some axis is zero-padded up to it and cropped back.

``sliding_window_inference(volume, patch_size, predictor)`` works for any number of
spatial axes; ``predictor`` maps patches [N, C, *patch_size] to [N, K, *patch_size]
(a network, or a diffusion sampler wrapped to return probabilities).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``patch`` covering [0, size) with the given overlap;
    the last start is ``size - patch``. ``size`` must be at least ``patch``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    stride = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / stride) + 1
    return sorted({min(i * stride, size - patch) for i in range(count)})


def window_weight(patch_size: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125, floor: float = 1e-3) -> torch.Tensor:
    """The blending weight of one window: constant 1, or a Gaussian centred on the window
    (sigma = ``sigma_scale`` x size per axis, peak 1) floored at ``floor`` of the peak."""
    if mode == "constant":
        return torch.ones(tuple(patch_size))
    if mode != "gaussian":
        raise ValueError(f"weighting must be 'gaussian' or 'constant', got {mode!r}")
    axes = []
    for size in patch_size:
        position = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        axes.append(torch.exp(-0.5 * (position / (sigma_scale * size)) ** 2))
    weight = axes[0]
    for axis in axes[1:]:
        weight = weight[..., None] * axis
    return weight.clamp(min=floor).float()


def window_slices(spatial: Sequence[int], patch_size: Sequence[int], overlap: float = 0.5) -> list[tuple[slice, ...]]:
    """The windows over a volume of shape ``spatial``, in the order they are predicted
    (an axis shorter than the patch counts as padded up to it)."""
    starts = [window_starts(max(size, patch), patch, overlap) for size, patch in zip(spatial, patch_size)]
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch_size)) for corner in itertools.product(*starts)]


def sliding_window_inference(
    volume: torch.Tensor,
    patch_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    weighting: str = "gaussian",
    batch_size: int = 4,
) -> torch.Tensor:
    """Blend ``predictor``'s outputs over overlapping windows into one prediction.

    Args:
        volume: [B, C, *spatial] input.
        patch_size: window size per spatial axis (the network's training patch).
        predictor: patches [N, C, *patch_size] -> [N, K, *patch_size].
        overlap: fraction of a window shared with its neighbour per axis (default 0.5).
        weighting: "gaussian" (default) or "constant" blending (``window_weight``).
        batch_size: windows per predictor call (default 4).

    Returns [B, K, *spatial] float32 on ``volume``'s device.
    """
    total, weights = _accumulate(volume, patch_size, predictor, overlap, weighting, batch_size)
    return total / weights


def coverage_weights(spatial: Sequence[int], patch_size: Sequence[int], overlap: float = 0.5, weighting: str = "gaussian") -> torch.Tensor:
    """The total blending weight each voxel of a volume of shape ``spatial`` receives."""
    volume = torch.zeros((1, 1, *spatial))
    return _accumulate(volume, patch_size, torch.zeros_like, overlap, weighting, batch_size=16)[1]


def _accumulate(volume, patch_size, predictor, overlap, weighting, batch_size):
    """Weighted sum of the window predictions and the sum of weights, cropped to the volume."""
    patch_size = tuple(int(p) for p in patch_size)
    spatial = tuple(volume.shape[2:])
    if len(patch_size) != len(spatial):
        raise ValueError(f"patch_size {patch_size} does not match the volume's spatial shape {spatial}")
    # pad short axes up to the patch (F.pad lists the last axis first)
    padding = [p for size, patch in zip(reversed(spatial), reversed(patch_size)) for p in (0, max(patch - size, 0))]
    padded = F.pad(volume, padding) if any(padding) else volume
    padded_shape = tuple(padded.shape[2:])

    windows = window_slices(padded_shape, patch_size, overlap)
    weight = window_weight(patch_size, weighting).to(volume.device)

    total, weights = None, torch.zeros(padded_shape, device=volume.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        patches = torch.cat([padded[(slice(None), slice(None), *window)] for window in chunk])
        # window-major: the first B outputs are the first window's
        outputs = predictor(patches).float().reshape(len(chunk), volume.shape[0], -1, *patch_size)
        if total is None:
            total = torch.zeros((volume.shape[0], outputs.shape[2], *padded_shape), device=volume.device)
        for window, output in zip(chunk, outputs):
            total[(slice(None), slice(None), *window)] += output * weight
            weights[window] += weight
    crop = tuple(slice(0, size) for size in spatial)
    return total[(slice(None), slice(None), *crop)], weights[crop]
