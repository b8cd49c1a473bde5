"""Verdiff-Net's diffusion U-Net with the noise semantic adapter (paper 001, Sec. 2.4).

The denoiser Phi_theta(x_t, t, f(b)) predicts the noise epsilon of the prior-shifted
process. Its input is the noisy mask x_t concatenated with the prior f(b), embedded by a
3x3 convolution and *added* to the MSFM image features X of the conditional U-Net
(MedSegDiff's additive fusion, which the paper adopts as its backbone), so mask and
image meet as features rather than as raw concatenated channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DilatedDepthwiseConv2d, SinusoidalTimeEmbedding, UNetLevels, group_norm


class NoiseSemanticAdapter(nn.Module):
    """NSA, eqs. 15-16: a selective-kernel spatial attention over two receptive fields.

    Reading of the paper (which follows LSKNet's selective kernel):
    - F = fine convolution of X (3x3, or 5x5 with padding 2), channels kept;
    - S = depthwise 7x7 convolution of F with dilation 3 (large receptive field, few weights);
    - 1x1 convolutions halve the channels of F and S; their concatenation is summarised by
      its channel-wise average and maximum (2 maps), a 7x7 convolution and a sigmoid give
      the two attention maps T = (T_F, T_S) (eq. 15);
    - V~ = F*T_F + S*T_S, expanded back to C channels by a 1x1 convolution, and the output
      V = V~ * X gates the input (eq. 16).

    Args:
        channels: C, input and output channels.
        fine_kernel: 3 (default) or 5, the fine-grained convolution's size.
    """

    def __init__(self, channels: int, fine_kernel: int = 3):
        super().__init__()
        if fine_kernel not in (3, 5):
            raise ValueError("fine_kernel must be 3 or 5")
        half = max(channels // 2, 1)
        self.fine = nn.Conv2d(channels, channels, fine_kernel, padding=fine_kernel // 2, groups=channels)
        self.spatial = DilatedDepthwiseConv2d(channels, 7, dilation=3)
        self.reduce_fine = nn.Conv2d(channels, half, 1)
        self.reduce_spatial = nn.Conv2d(channels, half, 1)
        self.attention = nn.Conv2d(2, 2, 7, padding=3)
        self.expand = nn.Conv2d(half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        spatial = self.spatial(fine)
        f, s = self.reduce_fine(fine), self.reduce_spatial(spatial)
        both = torch.cat([f, s], dim=1)
        pooled = torch.cat([both.mean(dim=1, keepdim=True), both.amax(dim=1, keepdim=True)], dim=1)
        t = self.attention(pooled).sigmoid()  # eq. 15
        v_bar = f * t[:, :1] + s * t[:, 1:]  # eq. 16
        return x * self.expand(v_bar)


class DiffusionUNet(UNetLevels):
    """Phi_theta: a time-conditioned U-Net whose encoder levels end in an NSA.

    Args:
        num_classes: mask channels (default 1).
        image_feature_channels: channels of the MSFM features X (the conditional U-Net's
            ``channels[0]``; default 16).
        channels: channels per level, finest first (default (16, 32, 64, 128)).
        time_dim: size of the timestep embedding (default 64).

    ``forward(x_t, t, prior, image_features)`` returns the predicted noise, shaped like x_t.
    """

    def __init__(
        self,
        num_classes: int = 1,
        image_feature_channels: int = 16,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        time_dim: int = 64,
    ):
        super().__init__()
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.mask_in = nn.Conv2d(2 * num_classes, channels[0], 3, padding=1)
        self.image_in = nn.Conv2d(image_feature_channels, channels[0], 1)
        self.add_levels(channels, time_dim, encoder_adapter=NoiseSemanticAdapter)  # an NSA ends every encoder level
        self.head = nn.Sequential(group_norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], num_classes, 3, padding=1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prior: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        h = self.mask_in(torch.cat([x_t, prior], dim=1)) + self.image_in(image_features)
        return self.head(self.run_levels(h, emb))
