"""Train the level map (``VerdiffSegmentLib.level_map``) on the AASCE landmarks.

Target: each vertebra's centre is the mean of its four landmark corners; the centre line
runs through the 17 centres, extended by one vertebra at each end (C7 = 0 above T1, S1 = 18
under L5, each a reflection of its neighbour's step). A pixel's target is the coordinate of
its closest point on that line (k + t on the step from level k to k + 1), extrapolated
along the end steps beyond 0 and 18. Its weight is 1 within ``BAND`` vertebra widths of the
line (the spine, where the segmentation's pieces lie) and ``OUTSIDE_WEIGHT`` elsewhere (the
map is only read inside segmented vertebrae). Loss: weighted smooth L1 in levels, quadratic
only below ``L1_BETA``: a vertebra is named by its median coordinate, which an L1 loss aims
at, and a wide quadratic zone pulled the ends of the spine towards the middle.

Augmentation (each draw): a random crop keeping all 17 vertebrae (the picture's field of
view varies: the network must count vertebrae, not read the row), a mirror image (AP
left/right), rotation up to ``ROTATION_DEGREES``, scale 0.85-1.1, and a gamma on the
intensities; the crop and the affine move the picture and the centres together.

``python -m training level-map --out runs/level-map`` trains on the card split's training
images of ``verdiff-xray`` (the validation images stay unseen) and ``export-level-map``
writes ``Resources/Models/level-map-xray.pt`` and its card.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.level_map import BOX, fit_geometry, fit_to_box, predict_level_map
from VerdiffSegmentLib.networks import UNetBaseline

from .datasets import aasce_mask, read_landmarks
from .xray_helpers import export_into_xray_cards, named_radiographs, train_on_split

BAND = 0.75  # vertebra widths either side of the centre line
OUTSIDE_WEIGHT = 0.05
ROTATION_DEGREES = 10.0
CHANNELS = (8, 16, 32, 64, 128, 128)  # six levels: the 8 x 3 bottleneck sees the whole picture
L1_BETA = 0.1  # smooth L1's quadratic zone, in levels: below a tenth of a level (session 7: beta 1 left the map compressed towards the middle, L5 half a level short)
STORE_ROWS = 512  # pictures are kept this tall (aspect kept) for the augmentation


def vertebra_centres(mat_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(centres [17, 2] as (row, col), widths [17]) from an AASCE landmark file."""
    points = read_landmarks(mat_path)  # TL, TR, BL, BR as (x, y)
    centres = points.mean(axis=1)[:, ::-1]
    widths = 0.5 * (np.linalg.norm(points[:, 1] - points[:, 0], axis=1) + np.linalg.norm(points[:, 3] - points[:, 2], axis=1))
    return centres, widths


def coordinate_target(centres: np.ndarray, widths: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(target, weight) float32 [rows, cols] for 17 centres (row, col) in pixel coordinates."""
    line = np.concatenate([2 * centres[:1] - centres[1:2], centres, 2 * centres[-1:] - centres[-2:-1]])  # levels 0..18
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    pixels = np.stack([rows.ravel(), cols.ravel()], axis=1)
    best_distance = np.full(len(pixels), np.inf, np.float32)
    target = np.zeros(len(pixels), np.float32)
    last = len(line) - 2
    for k in range(len(line) - 1):
        start, step = line[k], line[k + 1] - line[k]
        t = ((pixels - start) @ step) / max(float(step @ step), 1e-6)
        t = np.clip(t, -np.inf if k == 0 else 0.0, np.inf if k == last else 1.0)
        distance = np.linalg.norm(pixels - (start + t[:, None] * step), axis=1)
        closer = distance < best_distance
        best_distance[closer], target[closer] = distance[closer], k + t[closer]
    width = float(np.median(widths))
    weight = np.where(best_distance <= BAND * width, 1.0, OUTSIDE_WEIGHT).astype(np.float32)
    return target.reshape(shape), weight.reshape(shape)


def load_pictures(root: Path, names: set[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(picture float32 [STORE_ROWS, cols] normalised 0..1 by fit_to_box's rule, centres, widths) per named image."""
    out = []
    for picture, mat in named_radiographs(root, names):
        centres, widths = vertebra_centres(mat)
        scale = STORE_ROWS / picture.shape[0]
        cols = max(8, round(picture.shape[1] * scale))
        stored = fit_to_box(picture, (STORE_ROWS, cols))[0, 0].numpy()  # normalised, exactly fills the box
        out.append((stored, centres * np.array([STORE_ROWS / picture.shape[0], cols / picture.shape[1]]), widths * scale))
    return out


def augmented(picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, rng: np.random.Generator, box=BOX):
    """One training draw: (image [1, *box], target [*box], weight [*box])."""
    rows, cols = picture.shape
    top_limit = max(0.0, centres[0, 0] - 1.5 * widths[0])
    bottom_limit = min(rows, centres[-1, 0] + 1.5 * widths[-1])
    top, bottom = rng.uniform(0, top_limit), rng.uniform(bottom_limit, rows)
    crop = picture[int(top) : int(math.ceil(bottom))]
    centres = centres - np.array([int(top), 0.0])
    if rng.random() < 0.5:
        crop, centres = crop[:, ::-1], centres * np.array([1, -1]) + np.array([0, cols - 1])
    if rng.random() < 0.8:
        crop = crop ** float(np.exp(rng.normal(0, 0.25)))
    fitted = fit_to_box(np.ascontiguousarray(crop), box)  # re-normalised by percentiles, as at inference
    size, corner = fit_geometry(crop.shape, box)
    scale = np.array(size) / np.array(crop.shape)
    centres = (centres + 0.5) * scale - 0.5 + np.array(corner)
    widths = widths * scale.mean()
    # rotation and scale about the box centre, applied to picture and centres alike
    angle = math.radians(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    zoom = rng.uniform(0.85, 1.1)
    centre = np.array([(box[0] - 1) / 2, (box[1] - 1) / 2])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centres = (centres - centre) @ rotation.T * zoom + centre
    widths = widths * zoom
    # grid_sample maps output -> input in normalised (x, y): invert the forward map, in
    # normalised (row, col) D A D^-1 with D the pixel -> normalised scaling, then swap to (x, y)
    scaling = np.diag(2 / (np.array(box, float) - 1))
    inverse = scaling @ np.linalg.inv(rotation * zoom) @ np.linalg.inv(scaling)
    theta = torch.tensor(np.concatenate([inverse[::-1, ::-1], np.zeros((2, 1))], axis=1).astype(np.float32))[None]
    grid = F.affine_grid(theta, (1, 1, *box), align_corners=True)
    image = F.grid_sample(fitted, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    target, weight = coordinate_target(centres, widths, box)
    return image, torch.from_numpy(target), torch.from_numpy(weight)


def make_network() -> UNetBaseline:
    return UNetBaseline(in_channels=1, num_classes=1, channels=CHANNELS)


def evaluate(network, items) -> dict:
    """On truth vertebrae: the share whose median predicted coordinate over the landmark
    quadrilateral rounds to its level, and the mean and 95th percentile of |median - level|."""
    was_training = network.training
    network.eval()
    errors = []
    for image_path, mat in items:
        image = read_image(image_path)
        truth = sitk.GetArrayFromImage(aasce_mask(image, mat))  # the quadrilaterals, as ``datasets.read_item`` draws them
        coordinate = predict_level_map(network, sitk.GetArrayFromImage(image).astype(np.float32))
        errors += [float(np.median(coordinate[truth == level])) - level for level in range(1, 18) if (truth == level).any()]
    network.train(was_training)
    errors = np.asarray(errors)
    return {
        "vertebrae": len(errors),
        "named_right": round(float((np.abs(errors) < 0.5).mean()), 4),
        "mean_abs_error_levels": round(float(np.abs(errors).mean()), 4),
        "p95_abs_error_levels": round(float(np.percentile(np.abs(errors), 95)), 4),
    }


def train(data_root: Path, out: Path, steps: int = 2500, batch_size: int = 16, lr: float = 2e-3, seed: int = 0, val_every: int = 500,
          init: Path | None = None, limit: int | None = None, command: str | None = None) -> dict:
    """Train on the training images of the ``verdiff-xray`` card's split (``limit``: the first
    N only), validate on its validation images every ``val_every`` steps; writes
    ``out/stepN.pt`` (state dicts), ``out/log.json`` and returns the last validation
    (``xray_helpers.train_on_split``)."""
    network = make_network()

    def batch_loss(pictures, rng) -> torch.Tensor:
        draws = [augmented(*pictures[i], rng) for i in rng.integers(0, len(pictures), batch_size)]
        image = torch.stack([d[0] for d in draws])
        target, weight = torch.stack([d[1] for d in draws])[:, None], torch.stack([d[2] for d in draws])[:, None]
        return (F.smooth_l1_loss(network(image), target, reduction="none", beta=L1_BETA) * weight).sum() / weight.sum()

    return train_on_split(network, load_pictures, batch_loss, evaluate, data_root, out, steps, batch_size, lr, seed, val_every, init, limit, command)


WEIGHTS = "level-map-xray.pt"


def export(checkpoint: Path, models_dir: Path, data_root: Path, run_log: Path | None = None) -> dict:
    """Write ``checkpoint``'s weights (fp16) as ``models_dir/level-map-xray.pt``, validate
    them on the card split's validation images, and set ``naming.level_map`` in every X-ray
    card there (``xray_helpers.export_into_xray_cards``)."""
    return export_into_xray_cards(
        checkpoint, models_dir, data_root, run_log, WEIGHTS, make_network(), evaluate, ("naming", "level_map"),
        {"network": {"channels": list(CHANNELS)}, "box": list(BOX),
         "what": "each pixel's level coordinate (T1 = 1 ... L5 = 17) from the whole radiograph (VerdiffSegmentLib/level_map.py); names the vertebrae"},
        "the card's validation images (truth quadrilaterals, median coordinate per vertebra)",
    )
