"""Train the vertebra-level network (``VerdiffSegmentLib.vertebra_level``) on the AASCE landmarks.

Samples: every vertebra of the card split's training images: T1..L5 at the mean of their
four landmark corners, and C7 and S1 one landmark step past each end (the step between the
last two centres; kept where it lies in the picture), each as wide as its neighbour
(``extended_vertebrae``). Each radiograph is kept at the scale where its median vertebra is
``LEVEL_PATCH.width_px`` pixels wide, as inference resizes it.

Augmentation (each draw): the centre moved by up to ``CENTRE_JITTER`` widths and the width
scaled by ``WIDTH_JITTER`` (the segmentation's pieces place patches that roughly), the frame
turned by up to ``ROTATION_DEGREES``, a mirror image, a gamma on the intensities.

Loss: cross-entropy with label smoothing ``LABEL_SMOOTHING`` (the chain decoding reads the
probabilities, so overconfident ones would hide an uncertain count).

``python -m training vertebra-level --out runs/vertebra-level`` trains;
``export-vertebra-level --checkpoint runs/vertebra-level/stepN.pt`` writes
``Resources/Models/vertebra-level-xray.pt`` and names it in every X-ray card (``naming.level_network``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.levels import levels_from_log_probabilities
from VerdiffSegmentLib.vertebra_level import LEVEL_PATCH, LEVELS, VertebraLevelNetwork, level_log_probabilities
from VerdiffSegmentLib.vertebra_patches import at_scale, patches

from .endplate_tilt import vertebrae_of
from .xray_helpers import PatchHelper, named_radiographs, random_gamma, random_placement

CENTRE_JITTER = 0.2  # widths, each way
WIDTH_JITTER = (0.8, 1.25)
ROTATION_DEGREES = 10.0
LABEL_SMOOTHING = 0.05
WEIGHTS = "vertebra-level-xray.pt"


def extended_vertebrae(mat: Path) -> tuple[np.ndarray, np.ndarray]:
    """(centres [19, (row, col)], widths [19]) of C7, T1..L5 and S1 (``LEVELS``) in the radiograph's pixels."""
    centres, widths, _ = vertebrae_of(mat)
    centres = np.concatenate([(2 * centres[0] - centres[1])[None], centres, (2 * centres[-1] - centres[-2])[None]])
    return centres, np.concatenate([widths[:1], widths, widths[-1:]])


def load_samples(root: Path, names: set[str]):
    """[(picture float32 at patch scale, centres [19], widths [19], the indices of ``LEVELS`` inside the picture)] per named radiograph."""
    out = []
    for picture, mat in named_radiographs(root, names):
        picture, centres, widths = at_scale(picture, *extended_vertebrae(mat), LEVEL_PATCH)
        inside = [k for k, (row, col) in enumerate(centres) if 0 <= row < picture.shape[0] and 0 <= col < picture.shape[1]]
        out.append((picture, centres, widths, inside))
    return out


def draw(samples, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (patches [B, 1, rows, cols], level indices [B])."""
    images, targets = [], []
    for index in rng.integers(0, len(samples), batch_size):
        picture, centres, widths, inside = samples[index]
        k = inside[int(rng.integers(0, len(inside)))]
        centre, width, angle = random_placement(rng, centres[k], widths[k], CENTRE_JITTER, WIDTH_JITTER, ROTATION_DEGREES)
        patch = patches(picture, centre[None], np.array([width]), LEVEL_PATCH, np.array([angle]))[0]
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        patch = random_gamma(patch, rng)
        images.append(patch)
        targets.append(k)
    return torch.stack(images), torch.tensor(targets, dtype=torch.long)


def reader_figures(network, items, read) -> dict:
    """On the truth vertebrae T1..L5 (landmark centres and widths) of held-out radiographs, for a
    level reader ``read(network, picture, centres, widths)`` -> log-probabilities: the share whose
    most probable level is theirs, and the shares named right and wrong by the chain decoding
    (``levels.levels_from_log_probabilities``, its defaults) of the 17."""
    was_training = network.training
    network.eval()
    alone = right = wrong = total = 0
    truth = np.array(LEVELS[1:-1])
    for image_path, mat in items:
        picture = sitk.GetArrayFromImage(read_image(image_path)).astype(np.float32)
        centres, widths, _ = vertebrae_of(mat)
        scores = read(network, picture, centres, widths)
        alone += int((np.array(network.levels)[scores.argmax(axis=1)] == truth).sum())
        names = np.array([str(n) for n in levels_from_log_probabilities(scores, network.levels)])
        right += int((names == truth).sum())
        wrong += int(((names != truth) & (names != "None")).sum())
        total += len(truth)
    network.train(was_training)
    return {
        "vertebrae": total,
        "most_probable_right": round(alone / max(total, 1), 4),
        "named_right": round(right / max(total, 1), 4),
        "named_wrong": round(wrong / max(total, 1), 4),
    }


def evaluate(network, items) -> dict:
    """``reader_figures`` of the vertebra-level network (each vertebra's own patch)."""
    return reader_figures(network, items, level_log_probabilities)


LEVEL = PatchHelper(
    network=VertebraLevelNetwork, load_samples=load_samples, draw=draw,
    loss=lambda outputs, targets: F.cross_entropy(outputs, targets, label_smoothing=LABEL_SMOOTHING),
    evaluate=evaluate, weights=WEIGHTS, place=("naming", "level_network"),
    what="each vertebra's level (C7, T1..L5, S1) from a patch of the radiograph around it (VerdiffSegment/VerdiffSegmentLib/vertebra_level.py); names the pieces",
    split_note="the card's validation images (truth landmark centres and widths)",
    describe=lambda network: {"channels": list(network.channels), "levels": list(network.levels)},
)
train, export = LEVEL.train, LEVEL.export
