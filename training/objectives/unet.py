"""The U-Net baseline's training step: BCE + soft Dice on its logits (the loss Verdiff-Net's
prior is trained with, so the baseline and the prior learn the same thing)."""

from __future__ import annotations

import torch
from torch import nn

from . import autocast, mask_logit_loss


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
        return mask_logit_loss(self.terms, logits, mask)
