"""A radiograph's pixel size, polarity and scale (``VerdiffSegmentLib.radiograph``): the rules on
small images, and held-out AASCE radiographs through ``segment`` as another source would give
them (inverted grey levels, a physical pixel size, another resolution)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from conftest import DATA, MODELS  # noqa: E402
from VerdiffSegmentLib.errors import VerdiffError  # noqa: E402
from VerdiffSegmentLib.models import get_card, parse_card  # noqa: E402
from VerdiffSegmentLib.preparation import in_pixel_units  # noqa: E402
from VerdiffSegmentLib.radiograph import RadiographInput, inverted, rows_per_level, training_pixel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HELD_OUT = "sunhl-1th-10-Jan-2017-241 A AP"  # a held-out radiograph the card names whole (17 of 17)
CARD_ENTRY = {"pixel_mm": 0.2, "level_rows_px": [75, 134, 200]}


def test_card_entry_is_checked():
    assert RadiographInput.from_card(CARD_ENTRY) == RadiographInput(0.2, (75.0, 134.0, 200.0), True)
    for bad in ({"pixel_mm": 0.2}, {**CARD_ENTRY, "pixel_mm": -1}, {**CARD_ENTRY, "level_rows_px": [200, 134, 75]}, {**CARD_ENTRY, "polarity": "yes"}):
        with pytest.raises(ValueError):
            RadiographInput.from_card(bad)
    import json

    data = json.loads((MODELS / "verdiff-xray.json").read_text())
    data["input"]["radiograph"] = {"pixel_mm": 0.2}
    with pytest.raises(VerdiffError, match="radiograph"):
        parse_card(data, MODELS / "verdiff-xray.json")


def test_pixel_units_and_physical_spacing():
    radiograph = RadiographInput.from_card(CARD_ENTRY)
    picture = sitk.GetImageFromArray(np.zeros((20, 10), np.uint8))
    assert in_pixel_units(picture) and training_pixel(picture, radiograph) == 1.0
    picture.SetSpacing((0.15, 0.15))
    assert not in_pixel_units(picture) and training_pixel(picture, radiograph) == 0.2
    volume = sitk.GetImageFromArray(np.zeros((1, 20, 10), np.uint8))  # an X-ray in Slicer: one slice
    volume.SetSpacing((1.0, 1.0, 2.5))
    assert in_pixel_units(volume)


def test_inverted_mirrors_the_grey_levels_within_their_range():
    array = np.array([[10, 200], [60, 90]], np.uint16)
    picture = sitk.GetImageFromArray(array)
    picture.SetSpacing((0.2, 0.3))
    picture.SetOrigin((5.0, -2.0))
    flipped = inverted(picture)
    assert flipped.GetPixelID() == picture.GetPixelID() and flipped.GetSpacing() == picture.GetSpacing() and flipped.GetOrigin() == picture.GetOrigin()
    assert sitk.GetArrayFromImage(flipped).tolist() == [[200, 10], [150, 120]]


def test_rows_per_level_is_the_level_maps_slope_in_training_pixels():
    labels = np.zeros((1000, 40), np.uint8)
    labels[100:950, 15:25] = 1
    coordinates = np.broadcast_to((np.arange(1000, dtype=np.float32) / 50.0)[:, None], labels.shape)  # a level every 50 rows
    image = sitk.GetImageFromArray(labels)
    assert rows_per_level(image, coordinates, 1.0) == pytest.approx(50.0, rel=1e-4)
    image.SetSpacing((0.1, 0.1))  # 0.1 mm pixels, training pixels of 0.2 mm: 25 of them a level
    assert rows_per_level(image, coordinates, 0.2) == pytest.approx(25.0, rel=1e-4)
    assert rows_per_level(image, None, 1.0) is None
    assert rows_per_level(image, -coordinates, 1.0) is None  # levels that rise up the picture are no spine


def _held_out():
    from training.datasets import aasce_mask
    from VerdiffSegmentLib.io import read_image

    path = DATA / "xray-aasce" / "data" / "training" / f"{HELD_OUT}.jpg"
    assert HELD_OUT in get_card("verdiff-xray").validation_cases
    picture = read_image(path)
    truth = aasce_mask(picture, DATA / "xray-aasce" / "labels" / "training" / f"{HELD_OUT}.jpg.mat")
    return picture, truth


def _scores(result, truth: sitk.Image) -> dict:
    from VerdiffSegmentLib.levels import level_scores

    truth = sitk.GetArrayFromImage(truth)
    names = {k + 1: level for k, level in enumerate([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)])}
    predicted = sitk.GetArrayFromImage(result.labels).reshape(truth.shape)
    scores = level_scores(predicted, {s["value"]: s["level"] for s in result.segments}, truth, names)
    scores["binary_dice"] = 2 * ((predicted > 0) & (truth > 0)).sum() / ((predicted > 0).sum() + (truth > 0).sum())
    return scores


@pytest.fixture(scope="module")
def as_given():
    from VerdiffSegmentLib.pipeline import segment

    picture, truth = _held_out()
    result = segment(picture, get_card("verdiff-xray"), device="cpu")
    return result, _scores(result, truth)


def test_a_radiograph_as_trained_is_segmented_once(as_given):
    result, scores = as_given
    assert result.settings["radiograph"]["training_pixel"] == 1.0 and "first_training_pixel" not in result.settings["radiograph"]
    assert not result.settings["radiograph"]["inverted"]
    assert scores["correctly_named"] == 17 and scores["binary_dice"] > 0.85


def test_an_inverted_radiograph_is_read_the_right_way_round(as_given):
    """MONOCHROME1 storage (bone dark): without the polarity check the model drew soft tissue,
    binary Dice 0.0 on this radiograph (docs/levels.md, session 25)."""
    from VerdiffSegmentLib.pipeline import segment

    picture, truth = _held_out()
    result = segment(inverted(picture), get_card("verdiff-xray"), device="cpu")
    scores = _scores(result, truth)
    assert result.settings["radiograph"]["inverted"]
    assert any("inverted" in warning for warning in result.settings["reliability"]["warnings"])
    assert scores["binary_dice"] == pytest.approx(as_given[1]["binary_dice"], abs=1e-6)
    assert scores["correctly_named"] == 17


def test_a_physical_pixel_size_is_read_as_training_pixels(as_given):
    """The same picture with a DICOM-like 0.2 mm pixel: read at 4 mm a grid pixel (before) it
    scored binary Dice 0.17; as 0.2 mm training pixels it is the picture as trained."""
    from VerdiffSegmentLib.pipeline import segment

    picture, truth = _held_out()
    picture.SetSpacing((0.2, 0.2))
    truth.SetSpacing((0.2, 0.2))
    result = segment(picture, get_card("verdiff-xray"), device="cpu")
    assert result.settings["radiograph"]["training_pixel"] == pytest.approx(0.2)
    assert result.labels.GetSpacing() == (0.2, 0.2)
    assert _scores(result, truth)["binary_dice"] == pytest.approx(as_given[1]["binary_dice"], abs=0.01)


def test_a_radiograph_at_another_resolution_is_segmented_at_the_trained_scale(as_given):
    """The picture at twice its resolution: the model broke its vertebrae into fragments
    (binary Dice 0.63, 63 pieces); the level map's slope says a level takes about twice the
    training pixels, and the second look on a rescaled grid draws the 17 again."""
    from VerdiffSegmentLib.pipeline import segment

    picture, truth = _held_out()
    size = [2 * n for n in picture.GetSize()]

    def doubled(image, interpolator):
        out = sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), [s / 2 for s in image.GetSpacing()], image.GetDirection(), 0, image.GetPixelID())
        out.SetSpacing((1.0, 1.0))  # a picture without a pixel size
        return out

    result = segment(doubled(picture, sitk.sitkLinear), get_card("verdiff-xray"), device="cpu")
    adjustment = result.settings["radiograph"]
    assert adjustment["first_training_pixel"] == 1.0 and 1.6 < adjustment["training_pixel"] < 3.0
    assert any("segmented again" in warning for warning in result.settings["reliability"]["warnings"])
    scores = _scores(result, doubled(truth, sitk.sitkNearestNeighbor))
    assert scores["binary_dice"] > as_given[1]["binary_dice"] - 0.03
    assert scores["correctly_named"] >= 15 and scores["wrongly_named"] == 0


def _dicom_radiograph(picture: sitk.Image, path: Path, photometric: str) -> Path:
    """``picture`` written as a one-file DICOM radiograph (0.2 mm pixels) by GDCM, its grey levels
    stored as ``photometric`` says (MONOCHROME1: mirrored, the tag set in the file: SimpleITK's
    writer always writes MONOCHROME2, and the value has the same length)."""
    stored = inverted(picture) if photometric == "MONOCHROME1" else picture
    stored = sitk.Cast(stored, sitk.sitkUInt16)
    stored.SetSpacing((0.2, 0.2))
    stored.SetMetaData("0008|0060", "CR")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(stored)
    data = path.read_bytes()
    assert data.count(b"MONOCHROME2") == 1
    path.write_bytes(data.replace(b"MONOCHROME2", photometric.encode()))
    return path


def test_a_monochrome1_dicom_radiograph_is_read_bone_bright(tmp_path, as_given):
    """ITK 5.4 (SimpleITK 2.5, ``io.read_image``) converts MONOCHROME1 when reading: the file stored
    bone dark reads as the MONOCHROME2 file does, up to an offset, and segments as the picture."""
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.pipeline import segment

    picture, truth = _held_out()
    plain = sitk.GetArrayFromImage(read_image(_dicom_radiograph(picture, tmp_path / "MONOCHROME2.dcm", "MONOCHROME2"))).astype(np.int64)
    read = read_image(_dicom_radiograph(picture, tmp_path / "MONOCHROME1.dcm", "MONOCHROME1"))
    difference = sitk.GetArrayFromImage(read).astype(np.int64) - plain
    assert difference.min() == difference.max()  # the same grey levels, shifted
    result = segment(read, get_card("verdiff-xray"), device="cpu")  # one slice of 0.2 mm pixels, as Slicer holds an X-ray
    assert not result.settings["radiograph"]["inverted"] and result.settings["radiograph"]["training_pixel"] == pytest.approx(0.2)
    labels = sitk.GetArrayFromImage(result.labels).reshape(sitk.GetArrayViewFromImage(truth).shape)
    truth = sitk.GetArrayFromImage(truth)
    assert 2 * ((labels > 0) & (truth > 0)).sum() / ((labels > 0).sum() + (truth > 0).sum()) == pytest.approx(as_given[1]["binary_dice"], abs=0.01)
