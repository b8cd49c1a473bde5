"""Checkpoints that survive a kill at any moment and resume bit-exactly.

A checkpoint holds everything the next step depends on: the network, the optimiser, the
learning-rate schedule, the step, the sampler's and the noise generator's states, the
global RNG states of Python, NumPy and PyTorch (and CUDA), and the validation history
(best Dice, patience). It is written to ``NAME.tmp``, flushed to disk and renamed over
``NAME`` (``os.replace`` is atomic), so a reader sees the old or the new file, never half
of one. Files are plain tensors and Python values: they load with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def rng_states() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path) -> dict:
    """A plain state dict (``model.pt``, ``best.pt`` or exported fp16 weights) as float32."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def add_gap_channel(state: dict, target: dict) -> dict:
    """``state`` (a binary model's weights) fitted to the same network with one more output
    channel, the ``binary-gaps`` scheme's gaps (``labels.neighbour_gaps``), whose state dict is
    ``target``: the warm start of a gap run from a bundled binary model.

    Decided: a weight whose output axis (axis 0) is one longer, all else equal (the prior's
    and the denoiser's heads, their biases), gets the old rows and, for the gaps, a copy of
    the last old row (the vertebra's: a gap lies at a vertebra's edge, so the features are
    there to start from). The denoiser's ``mask_in`` reads [x_t, prior] of C channels each; with
    C + 1 the old columns go to their channels and the new gap columns are zero, so the binary
    channel computes exactly what it did at step 0. Other weights are returned as they are."""
    fitted = dict(state)
    for key, old in state.items():
        new = target.get(key)
        if new is None or new.shape == old.shape or new.dim() != old.dim():
            continue
        if new.shape[0] == old.shape[0] + 1 and new.shape[1:] == old.shape[1:]:
            fitted[key] = torch.cat([old, old[-1:]])
        elif key.endswith("mask_in.weight") and new.shape[1] == old.shape[1] + 2 and old.shape[1] % 2 == 0:
            classes = old.shape[1] // 2
            weight = torch.zeros(new.shape, dtype=old.dtype)
            weight[:, :classes] = old[:, :classes]
            weight[:, classes + 1 : 2 * classes + 1] = old[:, classes:]
            fitted[key] = weight
    return fitted


def spread_to_levels(state: dict, target: dict) -> dict:
    """``state`` (a binary or ``binary-gaps`` model's weights) fitted to the same network with
    one output channel per level (the ``levels`` scheme), whose state dict is ``target``: the
    warm start of a multi-class run from a bundled binary model.

    Decided: every level starts as the vertebra channel (each head row and bias a copy of the
    old first row: the features that find a vertebral body are where every level starts; the
    training target then tells the levels apart), and a gap channel is dropped. The denoiser's
    ``mask_in`` reads [x_t, prior] of C channels each: each level's column gets the old
    vertebra column of its half divided by K, so where every level channel holds what the
    binary channel held (at step 0 the K priors are the binary prior) the network computes
    exactly what the binary model did. Weights of the target's shape are returned as they are."""
    fitted = dict(state)
    head = [key for key in state if key.endswith("head.2.bias")]
    old_classes = int(state[head[0]].shape[0]) if head else 1
    for key, old in state.items():
        new = target.get(key)
        if new is None or new.shape == old.shape or new.dim() != old.dim():
            continue
        if new.shape[1:] == old.shape[1:] and old.shape[0] == old_classes:  # a head: K copies of the vertebra row
            fitted[key] = old[:1].repeat(new.shape[0], *([1] * (old.dim() - 1)))
        elif key.endswith("mask_in.weight") and old.shape[1] == 2 * old_classes and new.shape[1] % 2 == 0:
            classes = new.shape[1] // 2
            weight = torch.zeros(new.shape, dtype=old.dtype)
            weight[:, :classes] = old[:, :1] / classes
            weight[:, classes:] = old[:, old_classes : old_classes + 1] / classes
            fitted[key] = weight
    return fitted


def fit_image_input(state: dict, target: dict, context_slices: int) -> dict:
    """``state`` (weights to start from) fitted to a network of ``2 * context_slices + 1`` image
    channels whose own state dict is ``target``: the warm start of a 2.5D run from a model of
    fewer channels (a 1-channel model, or a 2.5D one of fewer neighbours), or of a planar
    (1-channel) run from a 2.5D model.

    Decided: every weight whose input-channel axis (axis 1) differs between ``state`` and
    ``target`` by an even number 2m, all else equal, is a convolution that reads the image (in
    Verdiff-Net the three MSFM branches; in the families that concatenate the image with a
    mask, the image comes first).
    Wider: its old image channels go to the middle of the new ones (the old centre slice on the
    new centre channel, old neighbours at the same distances), the m new channels on each side
    get zeros, and the channels after the image (a mask) keep their weights. So the widened
    network's output equals the old network's on the centre slice exactly at step 0, and
    training learns how much the neighbours add.
    Planar (``context_slices`` 0, session 17): the one image channel's kernel is the sum of the
    old image channels' kernels, so at step 0 the planar network computes what the 2.5D one
    computes on a slice repeated into its neighbour channels (its replicated edge), and
    training adapts it to single slices. Why: the 2.5D model has had the GPU's and the
    sessions' training; the planar model it replaces had far less. Narrowing to another 2.5D
    width is not done (which neighbours would merge is no better than a guess).
    Weights already of the target's shape are returned as they are; anything else is left
    for ``load_state_dict`` to refuse."""
    new_channels = 1 + 2 * int(context_slices)
    fitted = dict(state)
    for key, old in state.items():
        new = target.get(key)
        if new is None or new.shape == old.shape or old.dim() < 2 or new.dim() != old.dim():
            continue
        grown = new.shape[1] - old.shape[1]
        if grown == 0 or grown % 2 or new.shape[:1] != old.shape[:1] or new.shape[2:] != old.shape[2:]:
            continue
        weight = torch.zeros(new.shape, dtype=old.dtype)
        if grown < 0:  # a planar model from a 2.5D one
            if new_channels != 1:
                continue
            old_channels = 1 - grown
            weight[:, 0] = old[:, :old_channels].sum(dim=1)
            weight[:, 1:] = old[:, old_channels:]
        else:
            old_channels, side = new_channels - grown, grown // 2
            if old_channels < 1:
                continue
            weight[:, side : side + old_channels] = old[:, :old_channels]
            weight[:, new_channels:] = old[:, old_channels:]
        fitted[key] = weight
    return fitted
