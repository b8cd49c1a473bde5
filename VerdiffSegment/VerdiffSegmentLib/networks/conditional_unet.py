"""Verdiff-Net's conditional U-Net f(b) with the multi-scale fusion module (paper 001, Sec. 2.3).

The conditional U-Net is the discriminative half of Verdiff-Net: from the image b it
predicts a prior mask f(b) that shifts the diffusion process (see
``schedulers.prior_shifted``) and is the starting point of sampling. Its multi-scale
fusion module (MSFM) also hands its fused image features X to the diffusion U-Net, so
the image is encoded once per slice, not once per sampling step.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import UNetLevels, group_norm


class MultiScaleFusionModule(nn.Module):
    """MSFM, eqs. 11-14: selective fusion of 3x3, 5x5 and 7x7 convolutions of the image.

    - three parallel branches A~, B~, C~ (conv k x k, GroupNorm, SiLU), summed: b~ (eq. 11);
    - global average pooling of b~ to s in R^C (eq. 12);
    - a fully connected layer with BatchNorm and ELU to the compressed z in R^d (eq. 13);
    - one linear projection A, B, C in R^{C x d} per branch, softmax across the branches
      per channel, so a_n + b_n + c_n = 1, and the weighted sum X (eq. 14).

    Args:
        in_channels: channels of the image (1 for grey-level CT, MR and X-ray).
        channels: channels C of each branch and of the output X.
        compressed_dim: d, the size of z; default ``max(channels // 4, 8)``.
    """

    kernel_sizes = (3, 5, 7)

    def __init__(self, in_channels: int, channels: int, compressed_dim: int | None = None):
        super().__init__()
        d = compressed_dim or max(channels // 4, 8)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, channels, k, padding=k // 2), group_norm(channels), nn.SiLU())
            for k in self.kernel_sizes
        )
        self.squeeze = nn.Sequential(nn.Linear(channels, d), nn.BatchNorm1d(d), nn.ELU())
        self.branch_logits = nn.ModuleList(nn.Linear(d, channels) for _ in self.kernel_sizes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.stack([branch(image) for branch in self.branches], dim=1)  # B, 3, C, H, W
        s = features.sum(dim=1).mean(dim=(2, 3))  # eqs. 11-12
        z = self.squeeze(s)  # eq. 13
        weights = torch.stack([proj(z) for proj in self.branch_logits], dim=1).softmax(dim=1)  # B, 3, C
        return (weights[..., None, None] * features).sum(dim=1)  # eq. 14


class ConditionalUNet(UNetLevels):
    """f(b): MSFM, then a U-Net encoder-decoder to mask logits.

    Args:
        in_channels: image channels (default 1).
        num_classes: mask channels, one sigmoid channel per label (default 1: binary).
        channels: channels per U-Net level, finest first (default (16, 32, 64, 128)).

    ``forward(image)`` returns ``(logits, fused_features)``; the fused features are the
    MSFM output X at full resolution with ``channels[0]`` channels.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.fusion = MultiScaleFusionModule(in_channels, channels[0])
        self.add_levels(channels)
        self.head = nn.Sequential(group_norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], num_classes, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fusion(image)
        return self.head(self.run_levels(fused)), fused
