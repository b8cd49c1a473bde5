"""Patches of a radiograph at a vertebra's own scale, and the small CNN that reads them: what
the endplate-tilt network (``endplate_tilt``, a tilt per vertebra) and the vertebra-level
network (``vertebra_level``, a level per vertebra) share.

Decisions:
1. A patch is ``PatchShape.rows`` x ``cols`` pixels and spans ``span_rows`` x ``span_cols``
   vertebra widths, centred on the vertebra's centre, axis-aligned with the picture
   (sampled bilinearly; outside the picture, its darkest value: the picture is shifted to a
   minimum of 0 first, so that a constant offset of the grey levels, as 12-16 bit DICOM
   radiographs store them, changes nothing; before, an offset of 1000 renamed the end
   vertebrae of a held-out radiograph, session 25); intensities normalised per patch by its 1st
   and 99th percentiles (``transforms.normalise``). Its size follows the vertebra, so the network
   sees every vertebra at the same scale.
2. The picture is first resized (antialiased) so that its median vertebra width is
   ``PatchShape.width_px`` pixels (``at_scale``), in training as at inference: the patch then
   samples it at about one pixel per pixel, whatever the radiograph's resolution.
3. A piece of the segmentation places its patch by its centroid and its width along its
   principal axis nearer the horizontal (``piece_geometry``; a merged pair is as wide as one).
4. Network (``PatchNetwork``): five stages of two 3 x 3 convolutions (GroupNorm, SiLU), each
   stage halving the grid, global average pooling, a linear layer. Halving in the first
   stage too takes a quarter of the compute (a patch holds 16-32 pixels a vertebra width).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transforms import normalise


@dataclass(frozen=True)
class PatchShape:
    """A patch's pixels (``rows`` x ``cols``) and the vertebra widths it spans each way; pixels are square."""

    rows: int
    cols: int
    span_rows: float
    span_cols: float

    def __post_init__(self):
        if abs(self.rows / self.span_rows - self.cols / self.span_cols) > 1e-6:
            raise ValueError("a patch's pixels must be square: rows / span_rows == cols / span_cols")

    @property
    def width_px(self) -> float:
        """Pixels a vertebra width at the patch's scale (decision 2)."""
        return self.cols / self.span_cols


def stage_layers(previous: int, width: int, stride: int) -> list[nn.Module]:
    """One stage of two 3 x 3 convolutions (GroupNorm, SiLU), the first with ``stride``: the
    layers every helper network stacks (decision 4; ``spine_strip`` too)."""
    return [
        nn.Conv2d(previous, width, 3, stride=stride, padding=1),
        nn.GroupNorm(min(8, width), width),
        nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.GroupNorm(min(8, width), width),
        nn.SiLU(),
    ]


class PatchNetwork(nn.Module):
    """A small CNN: [B, 1, rows, cols] -> [B, outputs] (decision 4).

    Args:
        channels: channels of the five stages (default (16, 32, 64, 96, 128)).
        outputs: the linear head's outputs (default 1).
    """

    def __init__(self, channels=(16, 32, 64, 96, 128), outputs: int = 1):
        super().__init__()
        self.channels = tuple(int(n) for n in channels)
        layers, previous = [], 1
        for width in self.channels:
            layers += stage_layers(previous, width, stride=2)
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, int(outputs))

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patch).mean(dim=(2, 3)))


def patch_grid(centres: np.ndarray, widths: np.ndarray, image_shape, shape: PatchShape, angles_deg: np.ndarray | None = None) -> torch.Tensor:
    """``grid_sample`` grids [n, rows, cols, 2] for patches of ``shape`` at ``centres`` [n, (row, col)]
    (pixels) of vertebrae ``widths`` [n] wide in a picture of ``image_shape``; ``angles_deg``
    (training only) turns each patch's frame by that angle, so that the picture in it
    appears turned the other way (a vertebra tilted t shows as t - angle)."""
    centres, widths = np.asarray(centres, float).reshape(-1, 2), np.asarray(widths, float).reshape(-1)
    angles = np.radians(np.zeros(len(centres)) if angles_deg is None else np.asarray(angles_deg, float))
    v, u = np.meshgrid((np.arange(shape.rows) + 0.5) / shape.rows - 0.5, (np.arange(shape.cols) + 0.5) / shape.cols - 0.5, indexing="ij")
    down, across = shape.span_rows * widths[:, None, None] * v, shape.span_cols * widths[:, None, None] * u
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    # the frame's columns axis is (cos, -sin) in (x, y): turned counter-clockwise on the screen (y down) by the angle
    x = centres[:, 1, None, None] + across * cos + down * sin
    y = centres[:, 0, None, None] - across * sin + down * cos
    return pixel_grid(y, x, image_shape)


def pixel_grid(rows: np.ndarray, cols: np.ndarray, image_shape) -> torch.Tensor:
    """``grid_sample`` coordinates [..., 2] (``align_corners`` False) of the pixel positions
    ``rows``, ``cols`` (arrays of one shape) in a picture of ``image_shape``."""
    grid = np.stack([(2 * cols + 1) / image_shape[1] - 1, (2 * rows + 1) / image_shape[0] - 1], axis=-1)
    return torch.from_numpy(grid.astype(np.float32))


def at_scale(picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, shape: PatchShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picture, centres, widths) resized so that the median width is ``shape.width_px`` pixels (decision 2)."""
    factor = shape.width_px / float(np.median(widths))
    image = torch.as_tensor(np.asarray(picture, np.float32))[None, None]
    size = (max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor)))
    resized = F.interpolate(image, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)[0, 0].numpy()
    scale = np.array(size, float) / np.array(image.shape[-2:], float)
    return resized, (np.asarray(centres, float) + 0.5) * scale - 0.5, np.asarray(widths, float) * scale.mean()


def patches(picture: np.ndarray | torch.Tensor, centres: np.ndarray, widths: np.ndarray, shape: PatchShape, angles_deg: np.ndarray | None = None) -> torch.Tensor:
    """[n, 1, rows, cols] patches of a 2D picture [rows, cols], each normalised to 0..1 by its own 1st and 99th percentiles."""
    return sampled_normalised(picture, patch_grid(centres, widths, np.shape(picture)[-2:], shape, angles_deg))


def sampled_normalised(picture: np.ndarray | torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """[n, 1, rows, cols]: a 2D picture sampled (bilinear) at ``grids`` [n, rows, cols, 2]
    (``pixel_grid``), the darkest value outside it, each sample normalised to 0..1 by its own
    1st and 99th percentiles (a flat one: all zero). The patches' and the spine strip's sampling."""
    image = torch.as_tensor(np.asarray(picture, np.float32))[None, None]
    image = image - image.min()  # zero outside is the darkest value (decision 1)
    sampled = F.grid_sample(image.expand(len(grids), -1, -1, -1), grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = []
    for patch in sampled.numpy():
        low, high = np.percentile(patch, (1, 99))
        out.append(normalise(patch, float(low), float(max(high, low + 1e-6))))  # a flat patch: all zero
    return torch.from_numpy(np.stack(out).astype(np.float32))


def piece_geometry(labels: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(centres [n, (row, col)], widths [n]) of the pieces ``values`` of a 2D label map: the
    centroid, and sqrt(12) standard deviations along whichever principal axis runs closer to
    the picture's horizontal (a uniform bar's length; a merged pair of bodies is as wide as one)."""
    centres, widths = [], []
    for value in values:
        points = np.argwhere(labels == value).astype(float)
        centre = points.mean(axis=0)
        spread, axes = np.linalg.eigh(np.cov((points - centre).T) if len(points) > 2 else np.eye(2))
        across = int(np.argmax(np.abs(axes[1])))  # column component: the axis along the picture's rows
        centres.append(centre)
        widths.append(max(np.sqrt(12 * max(spread[across], 0.0)), 2.0))
    return np.reshape(centres, (-1, 2)), np.asarray(widths, float)


def large_pieces(labels: np.ndarray, values: list[int], least: int = 3) -> list[int]:
    """The ``values`` whose pieces hold at least ``least`` pixels (smaller ones have no direction
    or width), counted in one pass over the label map."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=max(values, default=0) + 1)
    return [v for v in values if counts[v] >= least]
