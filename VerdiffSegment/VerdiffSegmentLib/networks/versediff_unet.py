"""VerseDiff-UNet (paper 000): an x0-predicting diffusion U-Net with a shape-prior module per level.

The denoiser takes cat(I, x_t) (image and noisy mask) and the step index t, and returns
the logits of the clean mask x0 (Sec. II-B: "our network directly generates the predicted
mask"). Beside the encoder-decoder, the image alone is encoded into shape-prior features
S_f at every level, and each is summed with the decoder features I_D of its level, giving
the fused features I_f the decoder continues from (Sec. II-B, Fig. 1). The step index is
embedded by one learned look-up table shared by every block (Sec. II-B, last paragraph).

Where the paper is vague, and what this implementation decides:
- The shape-prior module S_f is not specified beyond "extracts structural semantic
  information from the input spine images" at each level and "interacting with the global
  shape prior". Here its input is the image only (not x_t), so the prior is the same clean
  anatomical cue at every noise level; a light image encoder (a stem, then one residual
  block per level with strided downsampling between) gives per-level image features, and
  S_f at each level is a local 3x3 convolution whose channels are scaled by a gate computed
  from the level's global average (squeeze-excitation): local structure modulated by
  global context, our reading of "global shape prior". (Another reading applies S_f to the
  encoder skip features I_E; the abstract's "from the input spine images" decided it.)
- "Each level" is every resolution of the U-Net: the bottleneck and each decoder level, so
  there are ``len(channels)`` shape-prior modules; the sum happens after the level's
  decoder block, before upsampling to the next level (or the output head).
- The U-Net blocks are the repository's residual blocks with GroupNorm (see ``layers``);
  the paper names no block. "Three downsampling and upsampling modules each" (Sec. II-C)
  is the default of four levels.
- The look-up table feeds each residual block's own linear projection of the embedding
  (the "added embedding"); its size is ``4 * channels[0]`` (the paper gives none).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Downsample, ResidualBlock, UNetLevels, group_norm


class ShapePriorModule(nn.Module):
    """S_f at one level: a 3x3 convolution of the image features (local structure), scaled per
    channel by a gate from their global average (global context).

    Args:
        channels: input and output channels of the level.
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 4, 4)
        self.local = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.global_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        local = self.local(features)
        return local * self.global_gate(local)


class ShapePriorEncoder(nn.Module):
    """Encodes the image into shape-prior features S_f, one map per U-Net level, finest first.

    Args:
        in_channels: image channels.
        channels: channels per level, finest first.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(c, c) for c in channels)
        self.down = nn.ModuleList(Downsample(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.priors = nn.ModuleList(ShapePriorModule(c) for c in channels)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(image)
        priors = []
        for level, (block, prior) in enumerate(zip(self.blocks, self.priors)):
            if level > 0:
                h = self.down[level - 1](h)
            h = block(h)
            priors.append(prior(h))  # the image pathway continues from h, not from the prior
        return priors


class VerseDiffUNet(UNetLevels):
    """The denoiser: x0 logits from cat(image, x_t), the step index t and the shape priors.

    Args:
        in_channels: image channels (default 1).
        num_classes: mask channels, one sigmoid channel per label (default 1).
        channels: channels per level, finest first (default (16, 32, 64, 128)).
        num_train_timesteps: rows of the step-index look-up table, the scheduler's T
            (default 1000).

    ``forward(x_t, t, image)`` returns x0 logits [B, num_classes, H, W]; H and W must be
    multiples of ``input_multiple``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels=(16, 32, 64, 128), num_train_timesteps: int = 1000):
        super().__init__()
        channels = tuple(channels)
        self.num_classes = num_classes
        self.input_multiple = 2 ** (len(channels) - 1)
        time_dim = 4 * channels[0]

        self.time_embedding = nn.Embedding(num_train_timesteps, time_dim)  # shared by every block
        self.shape_prior = ShapePriorEncoder(in_channels, channels)

        self.stem = nn.Conv2d(in_channels + num_classes, channels[0], 3, padding=1)
        self.add_levels(channels, time_dim)
        self.head = nn.Sequential(group_norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], num_classes, 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t.long())
        priors = self.shape_prior(image)  # finest first

        h = self.stem(torch.cat([image, x_t], dim=1))
        # I_f = I_D + S_f: each level's prior is summed into the middle and decoder features of that level
        return self.head(self.run_levels(h, emb, decoder_additions=priors))
