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
1. The patch (``TILT_PATCH``) is ``PATCH`` pixels square and spans ``SPAN`` vertebra widths:
   the vertebra and half its neighbours above and below, at 32 pixels a width; sampling,
   scale and the network are ``vertebra_patches``'s (its decisions 1-4).
2. The centre and width come from the segmentation's piece (``cobb``): a piece's centre
   is off by a fraction of a width where it is ragged; training moves the centre by up
   to ``CENTRE_JITTER`` widths and scales the width by ``WIDTH_JITTER``.
3. The network (``PatchNetwork``, one output) regresses the tilt in ``TILT_UNIT_DEG``; a
   full-resolution first stage was not trained for comparison.
4. The tilt reported is the mean of the patch's and its mirror image's (sign turned):
   held-out tilt error 2.53 -> 2.43 degrees (docs/levels.md, session 8).
"""

from __future__ import annotations

import numpy as np
import torch

from .vertebra_patches import PatchNetwork, PatchShape, at_scale, large_pieces, piece_geometry
from .vertebra_patches import patches as sample_patches

PATCH = 64  # pixels a side
SPAN = 2.0  # vertebra widths the patch spans: the vertebra and half its neighbours above and below
TILT_PATCH = PatchShape(PATCH, PATCH, SPAN, SPAN)
TILT_UNIT_DEG = 10.0  # the output is degrees / 10
CENTRE_JITTER = 0.15  # training: the centre moved by up to this many widths, each way
WIDTH_JITTER = (0.8, 1.25)  # training: the width scaled within this range


class EndplateTiltNetwork(PatchNetwork):
    """``PatchNetwork`` with one output: [B, 1, PATCH, PATCH] -> [B] tilts in ``TILT_UNIT_DEG``.

    Args:
        channels: channels of the five stages (default (16, 32, 64, 96, 128)).
    """

    def __init__(self, channels=(16, 32, 64, 96, 128)):
        super().__init__(channels, outputs=1)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return super().forward(patch)[:, 0]


def at_patch_scale(picture: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picture, centres, widths) resized so that the median width is ``PATCH / SPAN`` pixels."""
    return at_scale(picture, centres, widths, TILT_PATCH)


def patches(picture: np.ndarray | torch.Tensor, centres: np.ndarray, widths: np.ndarray, angles_deg: np.ndarray | None = None) -> torch.Tensor:
    """[n, 1, PATCH, PATCH] tilt patches (``vertebra_patches.patches``); ``angles_deg`` (training) turns
    each patch's frame, so that a vertebra tilted t shows as ``tilt_in_patch(t, angle)``."""
    return sample_patches(picture, centres, widths, TILT_PATCH, angles_deg)


def tilt_in_patch(tilt_deg, angle_deg):
    """The tilt a patch whose frame is turned by ``angle_deg`` shows of a vertebra tilted ``tilt_deg``."""
    return tilt_deg - angle_deg


@torch.no_grad()
def predict_tilts(network: torch.nn.Module, picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, mirror: bool = True) -> np.ndarray:
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


def vertebra_tilts(network: torch.nn.Module, picture: np.ndarray, labels: np.ndarray, values: list[int]) -> dict[int, float]:
    """Each piece's tilt (degrees) by label value, from the picture around it (``piece_geometry``);
    pieces under 3 pixels (no direction, and ``cobb`` measures none) are left out."""
    labels = np.asarray(labels)
    values = large_pieces(labels, values)
    if not values:
        return {}
    centres, widths = piece_geometry(labels, values)
    return {int(v): float(t) for v, t in zip(values, predict_tilts(network, picture, centres, widths))}
