"""Train the endplate-tilt network (``VerdiffSegmentLib.endplate_tilt``) on the AASCE landmarks.

Samples: every vertebra of the card split's training images (about 17 a radiograph): its
centre is the mean of its four landmark corners, its width the distance between the
middles of its left and right edges, its tilt the reference's line between those middles
(``tilts_degrees``). Each radiograph is kept at the scale where its median
vertebra is ``PATCH / SPAN`` pixels wide (``at_patch_scale``), as inference resizes it.

Augmentation (each draw): the centre moved and the width scaled (``CENTRE_JITTER``,
``WIDTH_JITTER``: the segmentation's pieces place patches that roughly), the patch's frame
turned by up to ``ROTATION_DEGREES`` (the target turns with it: ``tilt_in_patch``), a
mirror image (the tilt changes sign), and a gamma on the intensities.

Loss: smooth L1 in ``TILT_UNIT_DEG`` (quadratic below a degree).

``python -m training endplate-tilt --out runs/endplate-tilt`` trains;
``export-endplate-tilt --checkpoint runs/endplate-tilt/stepN.pt`` writes
``Resources/Models/endplate-tilt-xray.pt`` and names it in every X-ray card (``cobb.tilt_network``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from VerdiffSegmentLib.cobb import cobb_from_landmarks, cobb_from_vertebrae, smape
from VerdiffSegmentLib.endplate_tilt import CENTRE_JITTER, TILT_UNIT_DEG, WIDTH_JITTER, EndplateTiltNetwork, at_patch_scale, patches, predict_tilts, tilt_in_patch
from VerdiffSegmentLib.io import read_image

from .datasets import read_landmarks
from .xray_helpers import PatchHelper, named_radiographs, random_gamma, random_placement

ROTATION_DEGREES = 20.0
L1_BETA = 0.1  # in TILT_UNIT_DEG: quadratic below one degree
WEIGHTS = "endplate-tilt-xray.pt"


def edge_middles(mat_path: Path) -> np.ndarray:
    """[17, 2 (left, right), 2 (row, col)]: the middles of each vertebra's left and right edges."""
    points = read_landmarks(mat_path)
    return np.stack([(points[:, 0] + points[:, 2]) / 2, (points[:, 1] + points[:, 3]) / 2], axis=1)[..., ::-1]


def tilts_degrees(ends: np.ndarray) -> np.ndarray:
    """Tilts [n] in degrees (+ where the right side is higher, within -90..90) of edge middles [n, 2, (row, col)]."""
    d = ends[:, 1] - ends[:, 0]
    angle = np.degrees(np.arctan2(-d[:, 0], d[:, 1]))
    return (angle + 90.0) % 180.0 - 90.0


def vertebrae_of(mat: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres [17, (row, col)], widths [17], tilts [17] degrees) in the radiograph's pixels."""
    ends = edge_middles(mat)
    centres = read_landmarks(mat).mean(axis=1)[:, ::-1]
    return centres, np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1), tilts_degrees(ends)


def load_samples(root: Path, names: set[str]):
    """[(picture float32 at patch scale, centres, widths, tilts)] per named radiograph."""
    out = []
    for picture, mat in named_radiographs(root, names):
        centres, widths, tilts = vertebrae_of(mat)
        out.append((*at_patch_scale(picture, centres, widths), tilts))
    return out


def draw(samples, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (patches [B, 1, P, P], targets [B] in TILT_UNIT_DEG)."""
    images, targets = [], []
    for index in rng.integers(0, len(samples), batch_size):
        picture, centres, widths, tilts = samples[index]
        k = int(rng.integers(0, len(centres)))
        centre, width, angle = random_placement(rng, centres[k], widths[k], CENTRE_JITTER, WIDTH_JITTER, ROTATION_DEGREES)
        patch = patches(picture, centre[None], np.array([width]), np.array([angle]))[0]
        target = tilt_in_patch(tilts[k], angle)
        if rng.random() < 0.5:
            patch, target = patch.flip(-1), -target
        patch = random_gamma(patch, rng)
        images.append(patch)
        targets.append(target / TILT_UNIT_DEG)
    return torch.stack(images), torch.tensor(targets, dtype=torch.float32)


def evaluate(network, items) -> dict:
    """On the truth vertebrae (landmark centres and widths) of held-out radiographs: mean and
    95th percentile |tilt error| (degrees), and the Cobb SMAPE (%) of the angles from the 17
    predicted tilts and the landmarks' centre line against the reference's angles."""
    was_training = network.training
    network.eval()
    errors, predicted, truth = [], [], []
    for image_path, mat in items:
        picture = sitk.GetArrayFromImage(read_image(image_path)).astype(np.float32)
        centres, widths, tilts = vertebrae_of(mat)
        estimate = predict_tilts(network, picture, centres, widths)
        errors += list(np.abs(estimate - tilts))
        points = read_landmarks(mat)
        centre = np.stack([(points[:, 0] + points[:, 1]) / 2, (points[:, 2] + points[:, 3]) / 2], axis=1).reshape(-1, 2)
        radians = np.radians(estimate)
        predicted.append(cobb_from_vertebrae(np.stack([np.cos(radians), -np.sin(radians)], axis=1), centre, picture.shape[0]))
        truth.append(list(cobb_from_landmarks(points.reshape(-1, 2), picture.shape[0]).values()))
    network.train(was_training)
    return {
        "vertebrae": len(errors),
        "tilt_mean_abs_error_deg": round(float(np.mean(errors)), 3),
        "tilt_p95_abs_error_deg": round(float(np.percentile(errors, 95)), 3),
        "cobb_smape_on_truth_vertebrae_percent": smape(predicted, truth),
    }


TILT = PatchHelper(
    network=EndplateTiltNetwork, load_samples=load_samples, draw=draw, loss=lambda outputs, targets: F.smooth_l1_loss(outputs, targets, beta=L1_BETA),
    evaluate=evaluate, weights=WEIGHTS, place=("cobb", "tilt_network"),
    what="each vertebra's endplate tilt from a patch of the radiograph around it (VerdiffSegmentLib/endplate_tilt.py); the Cobb angles' tilts",
    split_note="the card's validation images (truth landmark centres and widths)",
)
train, export = TILT.train, TILT.export
