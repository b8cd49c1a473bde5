"""Level map: where along the spine each pixel of an AP radiograph lies, counted in
vertebrae (T1 = 1 ... L5 = 17, C7 = 0, S1 = 18), from one look at the whole picture.

Why (issue 15): the binary X-ray model's only anchor was the bottom of its range, so a
vertebra too many (the top of S1 drawn as a body) or too few (two upper-thoracic bodies
merged) left the whole spine unnamed or shifted every name. Which vertebra is T7 is a
global question: the segmentation network sees a 224-pixel crop of a 4-pixel grid, a
third of the spine. This small network sees the whole radiograph at once on a coarse
grid (the picture fitted into ``BOX`` rows x columns, its bottleneck covers it) and
regresses one number per pixel, the level coordinate: the position along the line
through the vertebral centres, k at the centre of level k, k + 0.5 half way to the next
(about the disc). A coordinate is smooth and local to learn, unlike 17 classes, and it
names any piece the separation finds: each vertebra is named by the median coordinate
over its pixels (``levels.levels_from_coordinates``), so a missing or an extra vertebra
changes no other name. The network is the baseline U-Net (``networks.UNetBaseline``)
with one regression channel; the card that uses it names it in ``naming.level_map``
(``models.ModelCard``), and it is loaded and checked like any bundled weights.

Decisions:
1. The picture is fitted into the box keeping its aspect ratio, centred, the rest zero
   (``fit_to_box``); intensities by the card's percentile normalisation.
2. The map is read back onto the input grid by bilinear interpolation of the box
   (``read_back``); outside the fitted picture nothing is predicted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import intensity_range, normalise

BOX = (256, 96)  # rows, columns: a median AASCE radiograph (2375 x 891) becomes 256 x 96, 10-11 rows a vertebra
NORMALISATION = {"kind": "percentile", "low": 0.5, "high": 99.5}


def fit_geometry(shape, box=BOX) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a picture of ``shape`` (rows, columns) sits in the box: ((rows, columns) it is
    resized to, (top, left) of its first pixel), its aspect ratio kept, centred. A picture
    point (r, c) lies at ((r + 0.5) * rows / shape[0] - 0.5 + top, ...) in the box."""
    scale = min(box[0] / shape[0], box[1] / shape[1])
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    return size, (int(round((box[0] - shape[0] * scale) / 2)), int(round((box[1] - shape[1] * scale) / 2)))


def fit_to_box(picture: np.ndarray, box=BOX, normalisation=NORMALISATION) -> torch.Tensor:
    """A 2D picture [rows, cols] (any intensities) -> the network's input [1, 1, *box]."""
    low, high = intensity_range(picture, normalisation)
    image = torch.from_numpy(normalise(picture, low, high))[None, None]
    (rows, cols), (top, left) = fit_geometry(picture.shape, box)
    out = torch.zeros((1, 1, *box))
    out[..., top : top + rows, left : left + cols] = F.interpolate(image, size=(rows, cols), mode="bilinear", antialias=True, align_corners=False)
    return out


def read_back(level_map: torch.Tensor, shape) -> np.ndarray:
    """The box's map [1, 1, *box] -> float32 [rows, cols] on the picture's grid (``fit_geometry``)."""
    (rows, cols), (top, left) = fit_geometry(shape, level_map.shape[-2:])
    inner = level_map[..., top : top + rows, left : left + cols].float()
    return F.interpolate(inner, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


@torch.no_grad()
def predict_level_map(network: torch.nn.Module, picture: np.ndarray) -> np.ndarray:
    """The level coordinate of every pixel of a 2D picture [rows, cols] (float32, same shape),
    computed on the network's device."""
    box = tuple(getattr(network, "box", BOX))
    parameter = next(network.parameters())
    image = fit_to_box(np.asarray(picture, np.float32), box).to(device=parameter.device, dtype=parameter.dtype)
    return read_back(network(image).float().cpu(), picture.shape)
