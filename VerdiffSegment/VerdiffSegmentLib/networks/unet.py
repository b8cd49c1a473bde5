"""A deterministic segmentation U-Net: the baseline of the model families.

It reuses ``ConditionalUNet`` (MSFM stem + residual U-Net levels) rather than a second
U-Net implementation, and returns only its mask logits.

Args:
    in_channels: image channels (default 1).
    num_classes: mask channels, one sigmoid channel per label (default 1).
    channels: channels per level, finest first (default (16, 32, 64, 128)).
"""

from __future__ import annotations

import torch
from torch import nn

from .conditional_unet import ConditionalUNet


class UNetBaseline(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels=(16, 32, 64, 128)):
        super().__init__()
        channels = tuple(channels)
        self.num_classes = num_classes
        self.input_multiple = 2 ** (len(channels) - 1)
        self.unet = ConditionalUNet(in_channels, num_classes, channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(image)[0]
