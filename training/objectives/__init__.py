"""The training side of each model family: its noising, its forward and its loss.

``objective_for(family, network, autocast_dtype)`` returns an ``nn.Module`` (so DDP sees one
forward per step) with:
- ``terms``: the names of the loss terms it returns, ``"total"`` first (the loop logs them
  and backpropagates ``total``);
- ``draw(batch, mask_shape, generator)``: the step's random inputs (timesteps, noise, ...)
  for the *global* batch, drawn from the loop's generator, so every rank draws the same and
  shards them, and a resumed run continues the same stream;
- ``forward(image, mask, **draws)``: the loss terms of this shard.
A family's objective lives in ``objectives/<module>.py`` (module name as in
``VerdiffSegmentLib.families.FAMILY_MODULES``) as the class ``Objective``.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from VerdiffSegmentLib.families import FAMILY_MODULES
from VerdiffSegmentLib.losses import bce_dice_terms


def objective_for(family: str, network: nn.Module, autocast_dtype: torch.dtype | None = None, max_timestep: int | None = None,
                  detach_prior_features: bool = False) -> nn.Module:
    """Verdiff-Net's options (``objectives.verdiff_net``), refused for the other families:
    ``max_timestep`` draws training timesteps from 0..N only (its cards sample from one start
    timestep); ``detach_prior_features`` keeps the diffusion loss out of the prior's encoder."""
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILY_MODULES)}")
    module = importlib.import_module(f".{FAMILY_MODULES[family]}", __package__)
    options = {"max_timestep": max_timestep, "detach_prior_features": detach_prior_features}
    asked = [name for name, value in options.items() if value not in (None, False)]
    if not asked:
        return module.Objective(network, autocast_dtype)
    if family != "verdiff-net":
        raise ValueError(f"{', '.join('--' + name.replace('_', '-') for name in asked)} is for the verdiff-net family, not {family}")
    return module.Objective(network, autocast_dtype, **options)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 (or another dtype) autocast when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def non_finite(terms: tuple[str, ...], *tensors: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """NaN loss terms when a network output is not finite (diverged weights), which the loop
    stops on naming the step; the losses would otherwise fail with an opaque message."""
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return None
    nan = torch.full((), float("nan"), device=tensors[0].device)
    return dict.fromkeys(terms, nan)


def mask_logit_loss(terms: tuple[str, ...], logits: torch.Tensor, mask: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss of a family whose network outputs mask logits (the U-Net baseline, ImgX-DiffSeg,
    VerseDiff-UNet): BCE + soft Dice on the logits in float32, plus any ``extra`` terms, all
    summed into ``total``; NaN terms when the logits are not finite."""
    logits = logits.float()
    bad = non_finite(terms, logits)
    if bad is not None:
        return bad
    scored = bce_dice_terms(logits, mask)
    return {"total": sum(extra.values()) + scored["bce"] + scored["dice"], **extra, **scored}
