"""The U-Net baseline's training step: BCE + soft Dice on its logits (the loss Verdiff-Net's
prior is trained with, so the baseline and the prior learn the same thing)."""

from __future__ import annotations

import torch
from torch import nn

from VerdiffSegmentLib.losses import bce_dice_terms

from . import autocast, non_finite


class Objective(nn.Module):
    terms = ("total", "bce", "dice")

    def __init__(self, network: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.network, self.autocast_dtype = network, autocast_dtype

    def draw(self, batch: int, mask_shape, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, image, mask) -> dict[str, torch.Tensor]:
        with autocast(image.device, self.autocast_dtype):
            logits = self.network(image)
        logits = logits.float()
        bad = non_finite(self.terms, logits)
        if bad is not None:
            return bad
        terms = bce_dice_terms(logits, mask)
        return {"total": terms["bce"] + terms["dice"], **terms}
