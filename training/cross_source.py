"""Validation beyond the development source (issue 16, "MR of any contrast"): the other MR
source in ``../shared/data`` and simulated contrasts of the held-out subjects.

Suites (``suite_cases``), each yielding ``evaluate``'s cases:

- ``clinical-sagittal``: ``mr-sagittal-2d``, 256x256 clinical T1-like spin-echo sagittal
  slices from another source (PNG, no spacing: pixels). Truth = mask value 2 (vertebral
  bodies, with the top of the sacrum, from about T11 down); slices whose mask has no body
  (00, 05, 10 are empty, 01 and 13 show discs only) are skipped. The bundled MR models
  label L1-L5 only, so a perfect L1-L5 result still loses the T11/T12 and sacrum parts:
  read these figures as a lower bound.
- one suite per ``CONTRASTS`` entry: the MR recipe's held-out subjects
  (``splits.MR_VALIDATION``) under a fixed, deterministic change of contrast or resolution,
  applied to the image normalised as inference does (0.5 and 99.5 percentiles) and written
  back on the image's own grid as float32, so ``segment`` normalises it again as it would
  a user's image. Decided here:

  - ``inverted``: 1 - x (dark and bright tissues swap, as between T1 and T2 for fluid);
  - ``v-curve``: |2x - 1| (mid-grey tissues go dark, dark and bright ones bright: a
    non-monotonic tissue map no scanner makes, the hardest case);
  - ``gamma-0.5`` and ``gamma-2``: x ** 0.5 and x ** 2 (brighter or darker mid-tones);
  - ``noise-0.1``: Gaussian noise of sigma 0.1 of the intensity range (seed 0), the
    LDSeg paper's test;
  - ``thick-4mm``: 4 mm thick sagittal slices: each slice the mean of its 4-slice block
    (partial volume across the slice axis), as a 4 mm acquisition resampled to 1 mm;
  - ``bias``: a smooth multiplicative field from 0.6 to 1.6 head to feet (coil shading).

The ``ct-abdomen-small`` MR example is not a suite: it is 20 axial slices of 3 mm of the upper
abdomen (60 mm of spine, whole vertebrae labelled), too short along the spine for a sagittal
body model to be judged on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.transforms import intensity_range

from .datasets import mr_item, truth_on_image_grid
from .labels import LabelScheme
from .splits import MR_VALIDATION

CLINICAL_FOLDER = "mr-sagittal-2d"
CLINICAL_BODY = 2  # mask value of the vertebral bodies in mr-sagittal-2d
CLINICAL_WITHOUT_BODIES = ("00", "01", "05", "10", "13")
PERCENTILES = {"kind": "percentile", "low": 0.5, "high": 99.5}


def _thick(x: np.ndarray, axis: int, block: int = 4) -> np.ndarray:
    """Each slice along ``axis`` replaced by the mean of its ``block``-slice block."""
    n = x.shape[axis]
    index = np.arange(n) // block
    sums = np.zeros_like(np.take(x, np.arange(index.max() + 1), axis=axis))
    np.add.at(sums, (slice(None),) * axis + (index,), x)
    counts = np.bincount(index).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(sums / counts, index, axis=axis)


def _bias(x: np.ndarray, axis: int) -> np.ndarray:
    ramp = np.linspace(0.6, 1.6, x.shape[axis]).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return x * ramp


CONTRASTS = {
    "inverted": lambda x, axes: 1.0 - x,
    "v-curve": lambda x, axes: np.abs(2.0 * x - 1.0),
    "gamma-0.5": lambda x, axes: x**0.5,
    "gamma-2": lambda x, axes: x**2,
    "noise-0.1": lambda x, axes: x + np.random.default_rng(0).normal(0.0, 0.1, x.shape),
    "thick-4mm": lambda x, axes: _thick(x, axes["left-right"]),
    "bias": lambda x, axes: _bias(x, axes["head-feet"]),
}
SUITES = ("clinical-sagittal", *CONTRASTS)


def anatomical_axes(image: sitk.Image) -> dict[str, int]:
    """Numpy axis of the image closest to left-right and to head-feet (from the direction matrix)."""
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    # column j of the direction matrix is image axis j in LPS; numpy axis = dimension - 1 - j
    to_numpy = lambda j: image.GetDimension() - 1 - j  # noqa: E731
    return {"left-right": to_numpy(int(np.abs(direction[0]).argmax())), "head-feet": to_numpy(int(np.abs(direction[2]).argmax()))}


def with_contrast(image: sitk.Image, name: str) -> sitk.Image:
    """``image`` under the simulated contrast ``name`` (module docstring), float32, same grid."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    low, high = intensity_range(array, PERCENTILES)
    normalised = np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0)
    out = sitk.GetImageFromArray(CONTRASTS[name](normalised, anatomical_axes(image)).astype(np.float32))
    out.CopyInformation(image)
    return out


def clinical_cases(data_root: Path, limit: int | None = None):
    """``mr-sagittal-2d`` slices that show vertebral bodies, with truth = the bodies."""
    folder = Path(data_root) / CLINICAL_FOLDER
    paths = [p for p in sorted((folder / "images").glob("*.png")) if p.stem not in CLINICAL_WITHOUT_BODIES]
    for path in paths[:limit]:
        image = read_image(path)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "masks" / path.name)))
        truth = (mask.reshape(sitk.GetArrayViewFromImage(image).shape) == CLINICAL_BODY).astype(np.uint8)
        yield f"clinical {path.stem}", image, truth, {f"clinical {path.stem}": None}, path


def contrast_cases(name: str, data_root: Path, scheme: LabelScheme, limit: int | None = None):
    """The held-out MR subjects under the simulated contrast ``name``."""
    for subject in MR_VALIDATION[:limit]:
        image, truth = truth_on_image_grid(mr_item(data_root, subject), scheme)
        yield f"{subject} {name}", with_contrast(image, name), truth, {f"{subject} {name}": None}, None


PLANAR_SUITES = ("clinical-sagittal",)  # single 2D slices: a 2.5D card's ``planar_model`` segments them


def suite_card(card, suite: str):
    """The card that segments ``suite``: ``card``, or for a planar suite its ``planar_model``
    when ``card`` is 2.5D (as ``pipeline.choose_card`` picks for a single slice)."""
    if suite in PLANAR_SUITES and card.context_slices and card.planar_model:
        from VerdiffSegmentLib.models import get_card, list_cards

        beside = card.path.parent  # a card being exported may sit in a run folder without it
        return get_card(card.planar_model, beside if any(c.name == card.planar_model for c in list_cards(beside)) else None)
    return card


def suite_cases(suite: str, data_root: Path, scheme: LabelScheme, limit: int | None = None):
    if suite == "clinical-sagittal":
        return clinical_cases(data_root, limit)
    if suite in CONTRASTS:
        return contrast_cases(suite, data_root, scheme, limit)
    raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
