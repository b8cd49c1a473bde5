"""ImgX-DiffSeg's denoiser (paper 002, Sec. 4.2): a time-conditioned U-Net predicting x0.

The noise-corrupted mask x_t and the image are concatenated along the channels and the
timestep is encoded by a sinusoidal embedding. As in the authors' code, x_t enters clipped
to [-1, 1] and mapped to [0, 1] (a noisy probability map, so unbounded noise does not
drown the image channel). The output is the *logits* of the clean mask x0 (the paper's
"Logits" output, trained with Dice + cross-entropy), which the x0 sampler maps to the
mask space as 2 sigmoid(logits) - 1.

Args:
    in_channels: image channels (default 1).
    num_classes: mask channels, one sigmoid channel per label (default 1).
    channels: channels per level, finest first (default (32, 64, 128, 256), the paper's
        four levels; the bundled CPU model uses narrower ones).
    time_dim: size of the timestep embedding (default 64).
    spatial_dims: 2 (default, slices [B, C, H, W]) or 3 (volumes [B, C, D, H, W], the
        paper's 3D variant; every axis is halved per level).

``forward(x_t, t, image)`` returns x0 logits shaped like x_t with ``num_classes`` channels;
every spatial size must be a multiple of ``input_multiple`` (the pipeline pads to it).

The 3D network is the same class built from the shared layers' 3D form
(``spatial_dims=3``), so the two variants cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import SinusoidalTimeEmbedding, UNetLevels, convolution, group_norm


class ImgXUNet(UNetLevels):
    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels=(32, 64, 128, 256), time_dim: int = 64, spatial_dims: int = 2):
        super().__init__()
        conv = convolution(spatial_dims)
        channels = tuple(channels)
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.input_multiple = 2 ** (len(channels) - 1)
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.stem = conv(in_channels + num_classes, channels[0], 3, padding=1)
        self.add_levels(channels, time_dim, spatial_dims)
        self.head = nn.Sequential(group_norm(channels[0]), nn.SiLU(), conv(channels[0], num_classes, 3, padding=1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        noisy_mask = (x_t.clamp(-1.0, 1.0) + 1) / 2  # as the authors' code: the noisy mask in [0, 1], not raw noise
        h = self.stem(torch.cat([image, noisy_mask], dim=1))
        return self.head(self.run_levels(h, emb))

