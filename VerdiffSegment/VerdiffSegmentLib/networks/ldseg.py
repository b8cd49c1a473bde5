"""LDSeg (paper 003): segmentation by conditional diffusion in a learned label latent.

Four parts, trained end to end (Fig. 1, Algorithm 1):
- label encoder f_label-enc: mask y -> standardised latent z_l(0), down-sampled;
- image encoder f_image-enc: image X -> embedding z_i of the same size, with multi-head
  self-attention in its last two levels;
- denoiser f_denoiser(z_l(t), z_i, t): z_l(t) and z_i concatenated, a residual stack with
  time embedding and self-attention;
- label decoder f_label-dec: latent -> logits of background + each label, softmax last.

Where the paper is vague, and what this implementation decides:
- Depth. The paper down-samples 4 times (latent 1/16 of the image). Here the number of
  down-samplings is ``len(channels) - 1``: the default 5 channel levels give the paper's 4
  and ``input_multiple`` 16; shorter tuples (the tests' (8, 16, 32)) give shallower
  latents, so ``input_multiple`` is always the pad multiple the model card records.
- Standardisation ("a normalization layer ... to ensure mu = 0, sigma = 1"). The latent
  is standardised across its channels at every latent pixel, with no learned scale or
  shift (which would undo it). Every pixel's channel vector then has mean 0 and variance
  1, so any batch, crop or whole slice has mean 0 and sd 1 exactly, and a latent pixel's
  value does not depend on the field of view (a per-image standardisation would shift the
  background's code with the amount of spine in view: 144-pixel training crops versus
  whole slices at inference). It needs ``latent_channels >= 2``; it leaves
  ``latent_channels - 1`` degrees of freedom per latent pixel.
- Image embedding size. As in the paper it has the label latent's size and channels, and
  is concatenated with z_l(t) as the denoiser's input.
- Attention. "Multi-head attention" after the residual block of the image encoder's last
  two levels (those reached by its last two down-samplings: 1/8 and 1/16 with the paper's
  4). A shallower ``channels`` keeps it only at levels of 1/8 or coarser, none for 3 levels:
  global attention costs pixels squared, and at 1/2 of a whole slice that is minutes
  per volume on a CPU. The denoiser's "self-attention" is the same block after each of
  its residual blocks, at the latent's resolution.
- Denoiser shape. The paper adapts the DDPM U-Net; at 1/16 resolution the latent is only
  9 x 9 for a 144-pixel crop (and of any size for a padded slice), too small to halve
  twice, so the denoiser keeps the latent resolution: residual blocks with the time
  embedding, each followed by global self-attention, width ``channels[-1]``.
- Encoders and decoder. "ResNet encoder without skip connections": a residual block per
  level and strided-convolution down-sampling (``layers``), GroupNorm rather than
  BatchNorm so ensemble members in one batch stay independent. The decoder mirrors the
  encoder with nearest-neighbour up-sampling, no skips.
- Label decoder output. ``num_classes + 1`` logits, background first; the softmax is
  applied by ``label_probabilities`` (and inside the cross-entropy of the loss).
- 3D. ``spatial_dims=3`` builds the same parts from 3D convolutions (the paper's Knee
  model: a 128 x 128 x 256 volume to an 8 x 8 x 16 latent); attention flattens all axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Downsample, ResidualBlock, SinusoidalTimeEmbedding, Upsample, convolution, group_norm


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean 0, variance 1 across the channels of every pixel (no learned affine)."""
    z = z.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.var(dim=1, unbiased=False, keepdim=True) + eps).sqrt()


def label_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The decoder's softmax, without the background channel: [B, num_classes, *spatial]."""
    return logits.float().softmax(dim=1)[:, 1:]


ATTENTION_FROM_LEVEL = 3  # image-encoder attention only at 1/8 resolution or coarser (cost grows with pixels squared)


class MultiHeadSelfAttention(nn.Module):
    """Pre-normalised multi-head self-attention over all pixels, added to its input.

    ``scaled_dot_product_attention``'s flash kernel keeps memory linear in the pixels.

    Args:
        channels: input and output channels, divisible by ``heads``.
        heads: attention heads (default 4).
        spatial_dims: 2 (default) or 3.
    """

    def __init__(self, channels: int, heads: int = 4, spatial_dims: int = 2):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        conv = convolution(spatial_dims)
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (b, c), spatial = x.shape[:2], x.shape[2:]
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, spatial.numel()).transpose(-1, -2)
        # each [b, heads, pixels, c / heads], contiguous: otherwise the CPU kernel falls back
        # to materialising the pixels x pixels attention matrix (11 GB for a 112 x 112 map)
        out = F.scaled_dot_product_attention(*(part.contiguous() for part in qkv.unbind(1)))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, *spatial))


class Encoder(nn.Module):
    """Residual levels without skips, a strided down-sampling before each level but the
    first, then a 1x1 projection to ``out_channels``.

    Args:
        in_channels: input channels.
        out_channels: channels of the code.
        channels: channels per level, finest first; ``len(channels) - 1`` down-samplings.
        attention_from: the first level (0 = finest) that ends in self-attention; None
            (default) for none.
        heads: attention heads (default 4).
        spatial_dims: 2 (default) or 3.
    """

    def __init__(self, in_channels: int, out_channels: int, channels, attention_from: int | None = None, heads: int = 4, spatial_dims: int = 2):
        super().__init__()
        conv = convolution(spatial_dims)
        self.stem = conv(in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, width in enumerate(channels):
            level = [Downsample(channels[i - 1], width, spatial_dims)] if i else []
            level.append(ResidualBlock(width, width, spatial_dims=spatial_dims))
            if attention_from is not None and i >= attention_from:
                level.append(MultiHeadSelfAttention(width, heads, spatial_dims))
            self.levels.append(nn.Sequential(*level))
        self.head = nn.Sequential(group_norm(channels[-1]), nn.SiLU(), conv(channels[-1], out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for level in self.levels:
            x = level(x)
        return self.head(x)


class LatentDenoiser(nn.Module):
    """f_denoiser: [z_t, z_i] -> the network's noise output, at latent resolution.

    Args:
        latent_channels: channels of z_t and of z_i.
        width: channels of the residual stack.
        time_dim: timestep embedding size.
        heads: attention heads.
        blocks: residual block + self-attention pairs (default 2).
        spatial_dims: 2 (default) or 3.
    """

    def __init__(self, latent_channels: int, width: int, time_dim: int, heads: int, blocks: int = 2, spatial_dims: int = 2):
        super().__init__()
        conv = convolution(spatial_dims)
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.stem = conv(2 * latent_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(width, width, time_dim, spatial_dims) for _ in range(blocks))
        self.attentions = nn.ModuleList(MultiHeadSelfAttention(width, heads, spatial_dims) for _ in range(blocks))
        self.head = nn.Sequential(group_norm(width), nn.SiLU(), conv(width, latent_channels, 3, padding=1))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, image_code: torch.Tensor) -> torch.Tensor:
        embedding = self.time_embedding(t)
        h = self.stem(torch.cat([z_t, image_code], dim=1))
        for block, attention in zip(self.blocks, self.attentions):
            h = attention(block(h, embedding))
        return self.head(h)


class LabelDecoder(nn.Module):
    """f_label-dec: latent -> class logits at image resolution; the encoder mirrored, no skips.

    Args:
        latent_channels: channels of the latent.
        out_channels: logits (background + labels).
        channels: the encoder's channels per level, finest first.
        spatial_dims: 2 (default) or 3.
    """

    def __init__(self, latent_channels: int, out_channels: int, channels, spatial_dims: int = 2):
        super().__init__()
        conv = convolution(spatial_dims)
        widths = tuple(reversed(channels))
        self.stem = conv(latent_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(*([Upsample(widths[i - 1], width, spatial_dims)] if i else []), ResidualBlock(width, width, spatial_dims=spatial_dims))
            for i, width in enumerate(widths)
        )
        self.head = nn.Sequential(group_norm(widths[-1]), nn.SiLU(), conv(widths[-1], out_channels, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)
        for level in self.levels:
            x = level(x)
        return self.head(x)


class LDSeg(nn.Module):
    """Args:
    in_channels: image channels (default 1).
    num_classes: label channels of the mask (default 1); the decoder has one more, background.
    channels: channels per encoder level, finest first (default (16, 32, 64, 128, 256):
        4 down-samplings, the paper's); the denoiser's width is the last.
    latent_channels: channels of the label latent and of the image embedding (default 4).
    time_dim: timestep embedding size (default 64).
    heads: attention heads of the image encoder and the denoiser (default 4).
    spatial_dims: 2 (default, slices [B, C, H, W]) or 3 (volumes [B, C, D, H, W], the paper's
        3D variant; not yet trained or wired into the pipeline).

    Use: ``encode_image`` once per slice, ``encode_label`` for training, ``denoise`` per
    step, ``decode`` the final latent, ``label_probabilities`` of the logits.
    Inputs' spatial sizes must be multiples of ``input_multiple``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, channels=(16, 32, 64, 128, 256), latent_channels: int = 4, time_dim: int = 64, heads: int = 4, spatial_dims: int = 2):
        super().__init__()
        channels = tuple(channels)
        if len(channels) < 2:
            raise ValueError("LDSeg needs at least 2 channel levels (one down-sampling)")
        if latent_channels < 2:
            raise ValueError("the latent is standardised across its channels: latent_channels must be at least 2")
        self.num_classes = num_classes
        self.latent_channels = latent_channels
        self.input_multiple = 2 ** (len(channels) - 1)
        self.label_encoder = Encoder(num_classes, latent_channels, channels, spatial_dims=spatial_dims)
        self.image_encoder = Encoder(in_channels, latent_channels, channels, max(len(channels) - 2, ATTENTION_FROM_LEVEL), heads, spatial_dims)
        self.denoiser = LatentDenoiser(latent_channels, channels[-1], time_dim, heads, spatial_dims=spatial_dims)
        self.label_decoder = LabelDecoder(latent_channels, num_classes + 1, channels, spatial_dims)

    def latent_shape(self, *size: int) -> tuple[int, ...]:
        """(channels, *spatial) of the latent of an input of spatial ``size`` (rows, cols or depth, rows, cols)."""
        return (self.latent_channels, *(-(-n // self.input_multiple) for n in size))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """z_i (eq. 9)."""
        return self.image_encoder(image)

    def encode_label(self, mask: torch.Tensor) -> torch.Tensor:
        """z_l(0) (eq. 10): the standardised label latent of a {0, 1} mask [B, num_classes, *spatial]."""
        return standardise(self.label_encoder(mask))

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, image_code: torch.Tensor) -> torch.Tensor:
        """f_denoiser(z_l(t), z_i, t): the output the scheduler reads as noise (or velocity)."""
        return self.denoiser(z_t, t, image_code)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """f_label-dec before its softmax: logits [B, num_classes + 1, *spatial], background first."""
        return self.label_decoder(z)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, image_code: torch.Tensor) -> torch.Tensor:
        """One denoising call, as the other families' ``forward``."""
        return self.denoise(z_t, t, image_code)
