"""A 2D MR picture without a pixel size (``preparation`` decision 5): read as 1 mm pixels, or, at
another size, as spanning the card's typical field of view; a real clinical sagittal slice
saved at twice its size through ``segment``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from conftest import DATA  # noqa: E402
from VerdiffSegmentLib.models import checked_picture_field_of_view  # noqa: E402
from VerdiffSegmentLib.preparation import picture_pixel_mm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SLICE = DATA / "mr-sagittal-2d" / "images" / "02.png"  # a clinical slice with bodies (another source than the training MR)


def test_the_field_of_view_rule():
    field = checked_picture_field_of_view({"typical": 256, "pixels": [192, 320]})
    assert field == (256.0, (192.0, 320.0))
    picture = sitk.GetImageFromArray(np.zeros((300, 256), np.uint8))
    assert picture_pixel_mm(picture, field) == 1.0 and picture_pixel_mm(picture, None) == 1.0
    assert picture_pixel_mm(sitk.GetImageFromArray(np.zeros((512, 400), np.uint8)), field) == 0.5
    assert picture_pixel_mm(sitk.GetImageFromArray(np.zeros((1, 128, 100), np.uint8)), field) == 2.0  # one slice, as Slicer holds a picture
    for bad in ({"typical": 256}, {"typical": -1, "pixels": [192, 320]}, {"typical": 256, "pixels": [320, 192]}):
        with pytest.raises(ValueError):
            checked_picture_field_of_view(bad)


def _dice(result, truth: np.ndarray) -> float:
    predicted = sitk.GetArrayFromImage(result.labels) > 0
    return float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


def test_a_picture_saved_at_twice_its_size_is_read_at_the_models_scale():
    """Read as 1 mm pixels, the 15 clinical slices saved at twice their size scored binary Dice
    0.434 (0.738 as given); read as spanning 256 mm, 0.732 (docs/levels.md, session 25)."""
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.pipeline import choose_card, segment

    picture = read_image(SLICE)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(SLICE).replace("images", "masks")))
    truth = (mask[..., 0] if mask.ndim == 3 else mask) == 2
    card = choose_card(picture, "MR")
    assert card.picture_field_of_view is not None
    as_given = segment(picture, card, device="cpu")
    assert "picture_pixel_mm" not in as_given.settings
    big = sitk.Resample(picture, [2 * n for n in picture.GetSize()], sitk.Transform(), sitk.sitkLinear, picture.GetOrigin(), [0.5, 0.5], picture.GetDirection(), 0, picture.GetPixelID())
    big.SetSpacing((1.0, 1.0))
    doubled = segment(big, card, device="cpu")
    assert doubled.settings["picture_pixel_mm"] == 0.5
    assert doubled.labels.GetSpacing() == (1.0, 1.0) and doubled.labels.GetSize() == big.GetSize()  # in the picture's own units
    assert any("256 mm" in warning for warning in doubled.settings["reliability"]["warnings"])
    big_truth = np.kron(truth, np.ones((2, 2), bool))
    assert _dice(doubled, big_truth) > _dice(as_given, truth) - 0.05
    for segment_row in doubled.segments:  # areas in the picture's pixels
        assert segment_row["area_mm2"] == pytest.approx(segment_row["voxels"])
