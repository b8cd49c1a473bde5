"""Train the vertebra-outline network (``VerdiffSegmentLib.vertebra_outline``) on the AASCE landmarks.

Samples: every vertebra of the card split's training images (about 17 a radiograph): its
centre is the mean of its four landmark corners, its width the distance between the middles
of its left and right edges (``endplate_tilt.vertebrae_of``, as the tilt network's), its
target the four corners. Each radiograph is kept at the scale where its median vertebra is
32 pixels wide (``at_scale``), as inference resizes it.

Augmentation (each draw): the centre moved and the width scaled (``CENTRE_JITTER``,
``WIDTH_JITTER``), the patch's frame turned by up to ``ROTATION_DEGREES`` (the corners turn
with it: ``corners_in_patch``), a mirror image (left and right corners swapped), and a gamma
on the intensities.

Loss: smooth L1 on the corners' offsets in widths (quadratic below ``L1_BETA``).

Warm start: ``--init Resources/Models/endplate-tilt-xray.pt`` takes the tilt network's
features (same patch, same stages); the head starts fresh (``xray_helpers.fit``).

``python -m training vertebra-outline --out runs/vertebra-outline`` trains;
``export-vertebra-outline --checkpoint runs/vertebra-outline/stepN.pt`` writes
``Resources/Models/vertebra-outline-xray.pt`` and names it in every X-ray card (``outline.network``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.vertebra_outline import (CENTRE_JITTER, OUTLINE_PATCH, WIDTH_JITTER, VertebraOutlineNetwork, corners_in_patch, fill_quadrilateral,
                                                mirrored, predict_corners)
from VerdiffSegmentLib.vertebra_patches import at_scale, patches

from .datasets import read_landmarks
from .endplate_tilt import vertebrae_of
from .xray_helpers import PatchHelper, named_radiographs, random_gamma, random_placement

ROTATION_DEGREES = 20.0
L1_BETA = 0.02  # widths: quadratic below about a pixel at 32 pixels a width
WEIGHTS = "vertebra-outline-xray.pt"


def corners_of(mat: Path) -> np.ndarray:
    """[17, 4 (TL, TR, BL, BR), (row, col)] landmark corners in the radiograph's pixels."""
    return read_landmarks(mat)[..., ::-1].astype(float)


def load_samples(root: Path, names: set[str]):
    """[(picture float32 at patch scale, centres, widths, corners)] per named radiograph."""
    out = []
    for picture, mat in named_radiographs(root, names):
        centres, widths, _ = vertebrae_of(mat)
        scaled, scaled_centres, scaled_widths = at_scale(picture, centres, widths, OUTLINE_PATCH)
        factor = scaled_widths[0] / widths[0]
        out.append((scaled, scaled_centres, scaled_widths, (corners_of(mat) + 0.5) * factor - 0.5))
    return out


def draw(samples, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (patches [B, 1, 64, 64], targets [B, 4, 2] in widths)."""
    images, targets = [], []
    for index in rng.integers(0, len(samples), batch_size):
        picture, centres, widths, corners = samples[index]
        k = int(rng.integers(0, len(centres)))
        centre, width, angle = random_placement(rng, centres[k], widths[k], CENTRE_JITTER, WIDTH_JITTER, ROTATION_DEGREES)
        patch = patches(picture, centre[None], np.array([width]), OUTLINE_PATCH, np.array([angle]))[0]
        target = torch.from_numpy(corners_in_patch(corners[k], centre, width, angle).astype(np.float32))
        if rng.random() < 0.5:
            patch, target = patch.flip(-1), mirrored(target)
        patch = random_gamma(patch, rng)
        images.append(patch)
        targets.append(target)
    return torch.stack(images), torch.stack(targets)


def evaluate(network, items, jitter: float = CENTRE_JITTER / 2, seed: int = 0) -> dict:
    """On the vertebrae of held-out radiographs, placed at their landmark centre moved by up
    to ``jitter`` widths (a fixed draw): mean corner error (widths) and the mean Dice of each
    predicted quadrilateral against the truth's, as ``outline_vertebrae`` fills them."""
    was_training = network.training
    network.eval()
    rng = np.random.default_rng(seed)
    errors, dices = [], []
    for image_path, mat in items:
        picture = sitk.GetArrayFromImage(read_image(image_path)).astype(np.float32)
        centres, widths, _ = vertebrae_of(mat)
        truth = corners_of(mat)
        placed = centres + rng.uniform(-jitter, jitter, centres.shape) * widths[:, None]
        estimate = predict_corners(network, picture, placed, widths)
        errors += list(np.linalg.norm(estimate - truth, axis=-1).mean(axis=1) / widths)
        for predicted, true in zip(estimate, truth):
            low = np.floor(np.minimum(predicted.min(0), true.min(0))).astype(int) - 2
            high = np.ceil(np.maximum(predicted.max(0), true.max(0))).astype(int) + 2
            shape = high - low
            dices.append(dice(fill_quadrilateral(shape, predicted - low), fill_quadrilateral(shape, true - low)))
    network.train(was_training)
    return {
        "vertebrae": len(errors),
        "corner_mean_error_widths": round(float(np.mean(errors)), 4),
        "quadrilateral_dice_mean": round(float(np.mean(dices)), 4),
        "quadrilateral_dice_p10": round(float(np.percentile(dices, 10)), 4),
    }


OUTLINE = PatchHelper(
    network=VertebraOutlineNetwork, load_samples=load_samples, draw=draw, loss=lambda outputs, targets: F.smooth_l1_loss(outputs, targets, beta=L1_BETA),
    evaluate=evaluate, weights=WEIGHTS, place=("outline", "network"),
    what="each vertebra's four corners from a patch of the radiograph around it (VerdiffSegmentLib/vertebra_outline.py); each piece completed with their quadrilateral",
    split_note="the card's validation images (truth landmark centres moved by up to 0.125 widths)",
)
train, export = OUTLINE.train, OUTLINE.export
