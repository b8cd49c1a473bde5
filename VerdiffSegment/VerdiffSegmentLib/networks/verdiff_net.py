"""Verdiff-Net (paper 001): the conditional U-Net f(b) and the diffusion U-Net Phi_theta together.

``condition(image)`` runs once per slice and returns what every sampling step needs: the
prior mask f(b) in the mask space [-1, 1], its logits (for the BCE of the prior), and the
MSFM image features. ``forward(x_t, t, condition)`` is one denoising call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .conditional_unet import ConditionalUNet
from .diffusion_unet import DiffusionUNet


@dataclass
class Condition:
    """Per-slice conditioning, computed once and reused at every sampling step."""

    prior: torch.Tensor  # f(b) in [-1, 1]: 2 * sigmoid(logits) - 1
    prior_logits: torch.Tensor
    image_features: torch.Tensor

    def repeat(self, n: int) -> "Condition":
        """The same conditioning for n ensemble members, batched member-major."""
        return Condition(*(x.repeat(n, 1, 1, 1) for x in (self.prior, self.prior_logits, self.image_features)))

    def channels_last(self) -> "Condition":
        return Condition(*(x.contiguous(memory_format=torch.channels_last) for x in (self.prior, self.prior_logits, self.image_features)))


class VerdiffNet(nn.Module):
    """Args:
    in_channels: image channels (default 1).
    num_classes: mask channels, one sigmoid channel per label (default 1).
    channels: channels per U-Net level, shared by both U-Nets (default (16, 32, 64, 128)).
    time_dim: timestep embedding size (default 64).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels=(16, 32, 64, 128), time_dim: int = 64):
        super().__init__()
        channels = tuple(channels)
        self.num_classes = num_classes
        self.input_multiple = 2 ** (len(channels) - 1)
        self.prior_net = ConditionalUNet(in_channels, num_classes, channels)
        self.denoiser = DiffusionUNet(num_classes, channels[0], channels, time_dim)

    def condition(self, image: torch.Tensor) -> Condition:
        logits, features = self.prior_net(image)
        return Condition(2.0 * logits.sigmoid() - 1.0, logits, features)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.denoiser(x_t, t, condition.prior, condition.image_features)
