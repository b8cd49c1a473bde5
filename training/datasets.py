"""Training data read exactly as inference reads it: through the canonical sagittal grid.

Adapters:
- ``aasce_xray``: AASCE X-ray JPGs with ``p2`` landmarks (68 points = 17 vertebrae T1..L5,
  corners TL, TR, BL, BR) -> vertebral-body masks by filling each quadrilateral in the
  polygon order TL, TR, BR, BL.
- ``labelled_volume``: a NIfTI/NRRD/MHA image and its label map; ``label_ids`` are the
  source's ids that count as spine (VerSe / TotalSegmentator vertebrae ids, MR 1..5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import SimpleITK as sitk
from PIL import Image, ImageDraw

from VerdiffSegmentLib.inferers.sagittal import sagittal_reference, to_sagittal_stack
from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.transforms import intensity_range, normalise


@dataclass
class Case:
    """One subject as normalised sagittal slices [S, H, W] and binary masks [S, H, W]."""

    name: str
    images: np.ndarray
    masks: np.ndarray


def aasce_mask(image: sitk.Image, mat_path: Path) -> sitk.Image:
    """Vertebral-body mask of one AASCE image from its landmark file."""
    points = scipy.io.loadmat(str(mat_path))["p2"].astype(float)
    if points.shape != (68, 2):
        raise ValueError(f"{mat_path}: expected 68x2 landmarks, got {points.shape}")
    canvas = Image.new("L", image.GetSize(), 0)
    draw = ImageDraw.Draw(canvas)
    for vertebra in points.reshape(17, 4, 2):
        top_left, top_right, bottom_left, bottom_right = vertebra
        draw.polygon([tuple(p) for p in (top_left, top_right, bottom_right, bottom_left)], fill=1)
    mask = sitk.GetImageFromArray(np.asarray(canvas, dtype=np.uint8))
    mask.CopyInformation(image)
    return mask


def aasce_cases(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, landmarks) for every AASCE training image that has landmarks."""
    images = sorted((root / "data" / "training").glob("*.jpg"))
    out = []
    for path in images:
        mat = root / "labels" / "training" / (path.name + ".mat")
        if mat.exists():
            out.append((path.stem, path, mat))
    return out


def slice_case(name: str, image: sitk.Image, label: sitk.Image, label_ids, spacing_mm: float, normalisation: dict) -> Case:
    """Resample a labelled image to the canonical sagittal grid, as inference does."""
    reference = sagittal_reference(image, spacing_mm)
    stack = to_sagittal_stack(image, reference, spacing_mm)
    low, high = intensity_range(sitk.GetArrayViewFromImage(image), normalisation)
    labels = to_sagittal_stack(label, reference, spacing_mm, is_label=True)
    mask = np.isin(labels, list(label_ids)).astype(np.uint8)
    return Case(name, normalise(stack, low, high), mask)


def load_volume_case(image_path: Path, label_path: Path, label_ids, spacing_mm: float, normalisation: dict) -> Case:
    image = read_image(image_path)
    label = sitk.ReadImage(str(label_path))
    return slice_case(Path(image_path).name, image, label, label_ids, spacing_mm, normalisation)


def load_aasce_case(image_path: Path, mat_path: Path, spacing_mm: float, normalisation: dict) -> Case:
    image = read_image(image_path)
    return slice_case(Path(image_path).name, image, aasce_mask(image, mat_path), [1], spacing_mm, normalisation)
