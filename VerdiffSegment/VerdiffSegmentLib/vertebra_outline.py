"""Each radiograph vertebra's quadrilateral (its four corners) read from a patch of the picture
around the piece the diffusion model drew, the shape the AASCE truth is made of (its landmarks
are the corners), to complete the model's ragged pieces.

Why (issue 15): on the 47 held-out radiographs the X-ray model's pieces, every one named
right, would score a per-level Dice of 0.81 (session 33's "names aside"), short of the 0.85
target whatever the naming does: the model misses 21 % of the truth's pixels and adds 16 %
(session 23), mostly at the bodies' sides. Smoothing the pieces' own outline (convex hull,
a rectangle from their moments; session 23) did not help, since the pixels themselves are
off. Landmark methods read corners from the picture at the vertebra's own scale; the
endplate-tilt network (``endplate_tilt``) does that for one angle with 1.9 degrees of
error. This network reads the four corners the same way.

Decisions:
1. The patch (``OUTLINE_PATCH``) is the endplate-tilt network's: 64 pixels square over two
   vertebra widths, placed by the piece's centroid and width (``vertebra_patches``,
   decisions 1-4). Its weights start from the tilt network's features (``training``).
2. Outputs: the corners top-left, top-right, bottom-left, bottom-right (the landmark
   files' order) as (down, across) offsets from the patch centre in vertebra widths (the
   width the patch was placed with). The reported corners are the mean of the patch's and
   its mirror image's (the mirror's left and right corners swapped and its across turned).
3. Which vertebra: the one whose centre is nearest the patch centre; training moves the
   centre by up to ``CENTRE_JITTER`` widths (more than the tilt network's 0.15: a ragged or
   partly missed piece puts its centroid further off).
4. A piece is completed with its quadrilateral (the quadrilateral's pixels that no piece
   holds join it) only where the two agree (intersection over union at least
   ``MIN_AGREEMENT``): a merged pair or a fragment has a centroid between vertebrae, where the
   corners describe one vertebra of two, and is kept as drawn. Why the union, not the
   quadrilateral alone: on held-out radiographs the model's well-placed pieces (centroid within
   0.05 widths of the truth's) score Dice 0.888 and their quadrilaterals 0.884, the pieces placed
   0.1-0.2 widths off 0.71 and 0.76 (session 37); the two err apart, and the model misses more
   of the truth than it adds, so their union gains where either alone does not (measured in
   docs/levels.md, session 37: replacing the piece gained half as much).
5. Corners are located on a heatmap (a softmax's expectation over a 16 x 16 grid of the
   patch, each cell an eighth of a width), not regressed from pooled features: the first
   version, the tilt network's global average pooling and a linear layer of eight outputs,
   reached a mean corner error of 0.085 widths and a quadrilateral Dice of 0.85 on held-out
   truth vertebrae after 2000 steps, and outlining the model's pieces with it lowered their
   Dice (names aside 0.8125 -> 0.795): pooling throws away where things are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from .vertebra_patches import PatchNetwork, PatchShape, at_scale, large_pieces, piece_geometry
from .vertebra_patches import patches as sample_patches

OUTLINE_PATCH = PatchShape(64, 64, 2.0, 2.0)  # the endplate-tilt network's (decision 1)
CORNERS = 4  # top-left, top-right, bottom-left, bottom-right
MIRRORED = [1, 0, 3, 2]  # each corner's mirror-image corner
CENTRE_JITTER = 0.25  # training: the centre moved by up to this many widths, each way (decision 3)
WIDTH_JITTER = (0.8, 1.25)  # training: the width scaled within this range
LAYERS_PER_STAGE = 6  # PatchNetwork: convolution, norm, activation, twice
MIN_AGREEMENT = 0.5  # intersection over union of piece and quadrilateral to replace the piece (decision 4)


class VertebraOutlineNetwork(PatchNetwork):
    """The tilt network's five stages with a heatmap head: [B, 1, 64, 64] -> [B, 4 corners, 2 (down, across)] in widths.

    Each corner is the expectation of a softmax over a 16 x 16 grid (decision 5), computed
    from the second stage's features (16 x 16) with the third's and the last's upsampled
    onto them (where the vertebra is, and which one).

    Args:
        channels: channels of the five stages (default (16, 32, 64, 96, 128), the tilt network's).
        head_channels: channels of the heatmap head's 1 x 1 and 3 x 3 convolutions (default 64).
    """

    def __init__(self, channels=(16, 32, 64, 96, 128), head_channels: int = 64):
        super().__init__(channels, outputs=1)
        taps = self.channels[1] + self.channels[2] + self.channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(taps, head_channels, 1), nn.GroupNorm(8, head_channels), nn.SiLU(),
            nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.GroupNorm(8, head_channels), nn.SiLU(),
            nn.Conv2d(head_channels, CORNERS, 1),
        )

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        taps, x = [], patch
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in (LAYERS_PER_STAGE * 2 - 1, LAYERS_PER_STAGE * 3 - 1):  # the ends of stages 2 and 3
                taps.append(x)
        taps.append(x)
        size = taps[0].shape[-2:]
        joined = torch.cat([taps[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taps[1:]], dim=1)
        heat = self.head(joined).flatten(2).softmax(-1)  # [B, 4, rows * cols]
        rows, cols = size
        down = ((torch.arange(rows, device=patch.device, dtype=heat.dtype) + 0.5) / rows - 0.5) * OUTLINE_PATCH.span_rows
        across = ((torch.arange(cols, device=patch.device, dtype=heat.dtype) + 0.5) / cols - 0.5) * OUTLINE_PATCH.span_cols
        grid = torch.stack(torch.meshgrid(down, across, indexing="ij"), dim=-1).view(-1, 2)  # [rows * cols, 2]
        return heat @ grid


def corners_in_patch(corners: np.ndarray, centre: np.ndarray, width: float, angle_deg: float = 0.0) -> np.ndarray:
    """Corners [4, (row, col)] in picture pixels -> (down, across) in widths in the frame of a
    patch at ``centre`` placed with ``width`` and turned by ``angle_deg`` (``patch_grid``'s frame)."""
    a = np.radians(angle_deg)
    dy, dx = (np.asarray(corners, float) - np.asarray(centre, float)).T
    across = dx * np.cos(a) - dy * np.sin(a)
    down = dx * np.sin(a) + dy * np.cos(a)
    return np.stack([down, across], axis=-1) / float(width)


def mirrored(corners: torch.Tensor) -> torch.Tensor:
    """Corners [..., 4, (down, across)] of a patch's mirror image, as the unmirrored patch's."""
    return corners[..., MIRRORED, :] * corners.new_tensor([1.0, -1.0])


@torch.no_grad()
def predict_corners(network: torch.nn.Module, picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, mirror: bool = True) -> np.ndarray:
    """Corners [n, 4, (row, col)] in ``picture``'s pixels of the vertebrae at ``centres`` [n,
    (row, col)] with ``widths`` [n]; ``mirror`` (default True): the mean of the patch's and its
    mirror image's (decision 2)."""
    centres, widths = np.asarray(centres, float).reshape(-1, 2), np.asarray(widths, float).reshape(-1)
    if len(centres) == 0:
        return np.zeros((0, CORNERS, 2))
    scaled, scaled_centres, scaled_widths = at_scale(picture, centres, widths, OUTLINE_PATCH)
    parameter = next(network.parameters())
    batch = sample_patches(scaled, scaled_centres, scaled_widths, OUTLINE_PATCH).to(device=parameter.device, dtype=parameter.dtype)
    offsets = network(batch).float()
    if mirror:
        offsets = (offsets + mirrored(network(batch.flip(-1)).float())) / 2
    offsets = offsets.cpu().numpy()
    # (down, across) in widths -> picture pixels: the scaled picture's width is the picture's times its scale
    return centres[:, None, :] + offsets * widths[:, None, None]


def fill_quadrilateral(shape, corners: np.ndarray) -> np.ndarray:
    """Bool [rows, cols]: the quadrilateral of ``corners`` [4, (row, col)] (TL, TR, BL, BR) filled
    as the truth masks are (PIL's polygon on pixel centres)."""
    canvas = Image.new("1", (int(shape[1]), int(shape[0])), 0)
    top_left, top_right, bottom_left, bottom_right = [(float(c), float(r)) for r, c in corners]
    ImageDraw.Draw(canvas).polygon([top_left, top_right, bottom_right, bottom_left], fill=1)
    return np.asarray(canvas, dtype=bool)


def outline_vertebrae(network: torch.nn.Module, picture: np.ndarray, labels: np.ndarray, values: list[int]) -> tuple[np.ndarray, list[int]]:
    """(new label map, the values completed): each piece ``values`` of the 2D ``labels`` whose
    quadrilateral agrees with it joined by the quadrilateral's pixels no piece holds (decision 4);
    the others as drawn."""
    labels = np.asarray(labels)
    values = large_pieces(labels, values)
    if not values:
        return labels.copy(), []
    centres, widths = piece_geometry(labels, values)
    corners = predict_corners(network, picture, centres, widths)
    out, completed = labels.copy(), []
    for k in np.argsort(centres[:, 0]):  # top to bottom: an upper piece takes a free pixel two quadrilaterals share
        piece = labels == values[k]
        quadrilateral = fill_quadrilateral(labels.shape, corners[k])
        union = np.count_nonzero(piece | quadrilateral)
        if union and np.count_nonzero(piece & quadrilateral) / union >= MIN_AGREEMENT:
            out[quadrilateral & (out == 0)] = values[k]
            completed.append(int(values[k]))
    return out, completed
