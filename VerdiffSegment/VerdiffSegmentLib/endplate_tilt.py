"""Endplate tilt of one vertebra from a patch of the radiograph around it: the tilts a
Cobb angle is measured between (``cobb``), read from the picture instead of the outline.

Why (issue 15): Cobb angles are the largest differences between vertebral tilts, so an
error of a few degrees on one vertebra moves an angle by as much. Measured from the
binary model's pieces (their outline, or the gaps between them) the held-out Cobb SMAPE
was 18 %, from the truth quadrilaterals 1 %: merged, broken and ragged pieces, not the
angle procedure, cost the rest. A tilt channel tried on the level map (``level_map``, on a
grid of about 10 rows a vertebra) was 3.5 degrees off on average and gave 19.5 % (session 8,
not kept). This network sees one vertebra at a time at a resolution fixed by its size,
as landmark methods do, and regresses its tilt: the AASCE reference's line from the middle of its
left edge to the middle of its right edge, in degrees from the picture's horizontal,
positive where the right side is higher.

Decisions:
1. The patch is ``PATCH`` pixels square and spans ``SPAN`` vertebra widths, centred on the
   vertebra's centre, axis-aligned with the picture (sampled bilinearly, zero outside);
   intensities normalised per patch by its percentiles (``transforms.normalise``). Its
   size follows the vertebra, so the network sees every vertebra at the same scale.
2. The picture is first resized (antialiased) so that its median vertebra width is
   ``PATCH / SPAN`` pixels (``at_patch_scale``), in training as at inference: the patch then
   samples it at about one pixel per pixel, whatever the radiograph's resolution.
3. The centre and width come from the segmentation's piece (``cobb``): a piece's centre
   is off by a fraction of a width where it is ragged; training moves the centre by up
   to ``CENTRE_JITTER`` widths and scales the width by ``WIDTH_JITTER``.
4. Network: five stages of two 3 x 3 convolutions (GroupNorm, SiLU), each stage halving
   the grid (64 -> 2), global average pooling, a linear layer; the output is the tilt in
   ``TILT_UNIT_DEG``. Halving in the first stage too takes a quarter of the compute (a
   patch holds about 32 pixels a vertebra width); a full-resolution first stage was not
   trained for comparison.
5. The tilt reported is the mean of the patch's and its mirror image's (sign turned):
   held-out tilt error 2.53 -> 2.43 degrees (docs/levels.md, session 8).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transforms import normalise

PATCH = 64  # pixels a side
SPAN = 2.0  # vertebra widths the patch spans: the vertebra and half its neighbours above and below
TILT_UNIT_DEG = 10.0  # the output is degrees / 10
CENTRE_JITTER = 0.15  # training: the centre moved by up to this many widths, each way
WIDTH_JITTER = (0.8, 1.25)  # training: the width scaled within this range


class EndplateTiltNetwork(nn.Module):
    """A small CNN: [B, 1, PATCH, PATCH] -> [B] tilts in ``TILT_UNIT_DEG``.

    Args:
        channels: channels of the five stages (default (16, 32, 64, 96, 128)).
    """

    def __init__(self, channels=(16, 32, 64, 96, 128)):
        super().__init__()
        self.channels = tuple(int(n) for n in channels)
        layers, previous = [], 1
        for width in self.channels:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.SiLU(),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, 1)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patch).mean(dim=(2, 3)))[:, 0]


def patch_grid(centres: np.ndarray, widths: np.ndarray, shape, angles_deg: np.ndarray | None = None) -> torch.Tensor:
    """``grid_sample`` grids [n, PATCH, PATCH, 2] for patches at ``centres`` [n, (row, col)]
    (pixels) spanning ``SPAN`` x ``widths`` [n] of a picture of ``shape``; ``angles_deg``
    (training only) turns each patch's frame by that angle, so that the picture in it
    appears turned the other way (a vertebra tilted t shows as t - angle: ``tilt_in_patch``)."""
    centres, widths = np.asarray(centres, float), np.asarray(widths, float)
    angles = np.radians(np.zeros(len(centres)) if angles_deg is None else np.asarray(angles_deg, float))
    offsets = (np.arange(PATCH) + 0.5) / PATCH - 0.5  # -0.5..0.5 of the span
    v, u = np.meshgrid(offsets, offsets, indexing="ij")  # v down the rows, u along the columns
    half = SPAN * widths[:, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    # the frame's columns axis is (cos, -sin) in (x, y): turned counter-clockwise on the screen (y down) by the angle
    x = centres[:, 1, None, None] + half * (u * cos + v * sin)
    y = centres[:, 0, None, None] + half * (-u * sin + v * cos)
    grid = np.stack([(2 * x + 1) / shape[1] - 1, (2 * y + 1) / shape[0] - 1], axis=-1)
    return torch.from_numpy(grid.astype(np.float32))


def at_patch_scale(picture: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picture, centres, widths) resized so that the median width is ``PATCH / SPAN`` pixels (decision 2)."""
    factor = (PATCH / SPAN) / float(np.median(widths))
    image = torch.as_tensor(np.asarray(picture, np.float32))[None, None]
    size = (max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor)))
    resized = F.interpolate(image, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)[0, 0].numpy()
    scale = np.array(size, float) / np.array(image.shape[-2:], float)
    return resized, (np.asarray(centres, float) + 0.5) * scale - 0.5, np.asarray(widths, float) * scale.mean()


def tilt_in_patch(tilt_deg, angle_deg):
    """The tilt a patch whose frame is turned by ``angle_deg`` shows of a vertebra tilted ``tilt_deg``."""
    return tilt_deg - angle_deg


def patches(picture: np.ndarray | torch.Tensor, centres: np.ndarray, widths: np.ndarray, angles_deg: np.ndarray | None = None) -> torch.Tensor:
    """[n, 1, PATCH, PATCH] patches of a 2D picture [rows, cols], each normalised to 0..1 by its own 1st and 99th percentiles."""
    image = torch.as_tensor(np.asarray(picture, np.float32))[None, None]
    grid = patch_grid(centres, widths, image.shape[-2:], angles_deg)
    sampled = F.grid_sample(image.expand(len(grid), -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = []
    for patch in sampled.numpy():
        low, high = np.percentile(patch, (1, 99))
        out.append(normalise(patch, float(low), float(max(high, low + 1e-6))))  # a flat patch: all zero
    return torch.from_numpy(np.stack(out).astype(np.float32))


@torch.no_grad()
def predict_tilts(network: nn.Module, picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, mirror: bool = True) -> np.ndarray:
    """Tilts (degrees, + where the right side is higher) of the vertebrae at ``centres`` [n,
    (row, col)] with ``widths`` [n] (pixels) of a 2D picture; on the network's device.
    ``mirror`` (default True): the mean of the patch's and its mirror image's (sign turned)."""
    if len(centres) == 0:
        return np.zeros(0)
    parameter = next(network.parameters())
    batch = patches(*at_patch_scale(picture, centres, widths)).to(device=parameter.device, dtype=parameter.dtype)
    tilts = network(batch).float()
    if mirror:
        tilts = (tilts - network(batch.flip(-1)).float()) / 2
    return tilts.cpu().numpy() * TILT_UNIT_DEG


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


def vertebra_tilts(network: nn.Module, picture: np.ndarray, labels: np.ndarray, values: list[int]) -> dict[int, float]:
    """Each piece's tilt (degrees) by label value, from the picture around it (``piece_geometry``);
    pieces under 3 pixels (no direction, and ``cobb`` measures none) are left out."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(values, default=0) + 1)  # one pass, as cobb_measurements counts
    values = [v for v in values if counts[v] >= 3]
    if not values:
        return {}
    centres, widths = piece_geometry(labels, values)
    return {int(v): float(t) for v, t in zip(values, predict_tilts(network, picture, centres, widths))}
