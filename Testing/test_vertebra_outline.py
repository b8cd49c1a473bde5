"""The X-ray vertebra-outline network (``VerdiffSegmentLib.vertebra_outline``,
``training.vertebra_outline``): the patch frame of its corners and their mirror image, the
training draw on real landmarks, the quadrilaterals filled as the truth masks are, the
bundled network's accuracy on held-out radiographs, the pieces it replaces and keeps, real
training steps and export into the X-ray cards, and tampered, missing or malformed weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from conftest import DATA, MODELS, copy_models, drop_from_card, flip_a_byte, xray_image  # noqa: E402
from VerdiffSegmentLib import vertebra_outline  # noqa: E402
from VerdiffSegmentLib.errors import VerdiffError  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_outline_network  # noqa: E402
from VerdiffSegmentLib.vertebra_outline import OUTLINE_PATCH, corners_in_patch, fill_quadrilateral, mirrored, outline_vertebrae  # noqa: E402
from VerdiffSegmentLib.vertebra_patches import at_scale, patches  # noqa: E402
from training import vertebra_outline as training_outline  # noqa: E402
from training.datasets import aasce_mask  # noqa: E402
from training.xray_helpers import validation_items  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PIXELS_PER_WIDTH = OUTLINE_PATCH.cols / OUTLINE_PATCH.span_cols


def held_out(count: int):
    return validation_items(DATA, json.loads((MODELS / "verdiff-xray.json").read_text()))[:count]


def dots_picture(shape, corners, radius=2.5):
    """A blank picture with a bright dot at each corner [4, (row, col)]."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    picture = np.zeros(shape, np.float32)
    for r, c in corners:
        picture[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = 1.0
    return picture


def dots_in_patch(patch: np.ndarray) -> np.ndarray:
    """[4, (down, across)] in widths: the centres of the four dots a patch shows."""
    blobs, count = ndi.label(patch > 0.3)
    assert count == 4
    found = np.array(ndi.center_of_mass(np.ones_like(blobs), blobs, range(1, 5)))
    return (found + 0.5) / PIXELS_PER_WIDTH - np.array([OUTLINE_PATCH.span_rows, OUTLINE_PATCH.span_cols]) / 2


def assert_each_corner_has_a_dot(found, corners, tolerance_px=1.5):
    """Every corner [4, (down, across)] within ``tolerance_px`` patch pixels of a dot of its own."""
    distances = np.linalg.norm(found[None] - corners[:, None], axis=-1)
    assert sorted(np.argmin(distances, axis=1)) == [0, 1, 2, 3], (found, corners)
    assert distances.min(axis=1).max() < tolerance_px / PIXELS_PER_WIDTH, (found, corners)


@pytest.mark.parametrize("angle", [-15.0, 0.0, 12.0])
def test_corners_in_a_turned_patch_are_where_the_patch_shows_them(angle):
    import torch

    corners = np.array([[180.0, 165.0], [172.0, 232.0], [226.0, 170.0], [219.0, 236.0]])  # TL, TR, BL, BR
    picture = dots_picture((400, 400), corners)
    centre, width = np.array([200.0, 200.0]), 80.0
    patch = patches(picture, centre[None], np.array([width]), OUTLINE_PATCH, np.array([angle]))[0, 0].numpy()
    expected = corners_in_patch(corners, centre, width, angle)
    assert_each_corner_has_a_dot(dots_in_patch(patch), expected)
    # the top corners above the bottom ones and left left of right, in the turned frame too
    assert expected[[0, 1], 0].max() < expected[[2, 3], 0].min() and expected[0, 1] < expected[1, 1] and expected[2, 1] < expected[3, 1]
    # its mirror image shows the mirrored corners, left and right swapped so that left is left again
    flipped = mirrored(torch.from_numpy(expected)).numpy()
    assert_each_corner_has_a_dot(dots_in_patch(patch[:, ::-1]), flipped)
    assert flipped[0, 1] < flipped[1, 1] and flipped[2, 1] < flipped[3, 1]


def test_training_draw_targets_the_corners_the_patch_shows():
    """Dots painted at a held-out vertebra's landmark corners: every augmented patch of it
    (moved, scaled, turned, mirrored, gamma) shows them where its target says."""
    image, mat = held_out(1)[0]
    centres, widths, _ = training_outline.vertebrae_of(mat)
    corners = training_outline.corners_of(mat)
    shape = (int(corners[..., 0].max() + 200), int(corners[..., 1].max() + 200))
    rng = np.random.default_rng(5)
    for k in (1, 8, 16):
        picture = dots_picture(shape, corners[k], radius=3.0)
        scaled, moved, sizes = at_scale(picture, centres, widths, OUTLINE_PATCH)
        factor = sizes[0] / widths[0]
        sample = [(scaled, moved[k : k + 1], sizes[k : k + 1], ((corners + 0.5) * factor - 0.5)[k : k + 1])]
        for _ in range(4):
            images, targets = training_outline.draw(sample, rng, 1)
            target = targets[0].numpy()
            assert_each_corner_has_a_dot(dots_in_patch(images[0, 0].numpy()), target)
            assert target[0, 1] < target[1, 1] and target[2, 1] < target[3, 1]  # left is left, mirrored or not


def test_quadrilaterals_are_filled_as_the_truth_masks():
    image, mat = held_out(1)[0]
    truth = sitk.GetArrayFromImage(aasce_mask(read_image(image), mat)) > 0
    filled = np.zeros_like(truth)
    for corners in training_outline.corners_of(mat):
        filled |= fill_quadrilateral(truth.shape, corners)
    assert np.array_equal(filled, truth)


def test_bundled_network_outlines_held_out_truth_vertebrae():
    """On the held-out radiographs' truth vertebrae (the 47 of 48 whose landmarks describe 17
    vertebrae, placed a little off their centre) the corner error and the quadrilaterals' Dice
    are the card's; an untrained network's quadrilaterals score about 0.5."""
    card = get_card("verdiff-xray")
    recorded = card.raw["outline"]["network"]["validation"]
    scores = training_outline.evaluate(load_outline_network(card), held_out(48))
    assert scores["vertebrae"] == 47 * 17
    assert scores["corner_mean_error_widths"] == pytest.approx(recorded["corner_mean_error_widths"], abs=0.001)
    assert scores["quadrilateral_dice_mean"] == pytest.approx(recorded["quadrilateral_dice_mean"], abs=0.001)
    assert scores["quadrilateral_dice_mean"] > 0.85


def test_pieces_are_completed_and_a_merged_pair_is_kept():
    """The truth vertebrae of a held-out radiograph as pieces, two of them merged into one:
    most single ones are completed with their quadrilateral (only background pixels join
    them, every piece keeps its own); the merged pair, whose centre lies on the disc between
    them, is kept as drawn (decision 4)."""
    image, mat = held_out(3)[2]
    picture = sitk.GetArrayFromImage(read_image(image)).astype(np.float32)
    truth = sitk.GetArrayFromImage(aasce_mask(read_image(image), mat))
    pieces = np.where(truth == 10, 9, truth)  # T9 and T10 one piece
    values = [v for v in range(1, 18) if v != 10]
    outlined, completed = outline_vertebrae(load_outline_network(get_card("verdiff-xray")), picture, pieces, values)
    assert 9 not in completed and np.array_equal(outlined == 9, pieces == 9)
    assert len(completed) >= 13
    assert np.array_equal(outlined[pieces > 0], pieces[pieces > 0])
    added = (outlined > 0) & (pieces == 0)
    assert added.any() and set(np.unique(outlined[added])) <= set(completed)


def test_segment_completes_the_named_pieces(tmp_path):
    """Through the pipeline: the pieces the model drew and named, completed by
    ``outline_vertebrae`` exactly (a copy of the cards without the outline network gives the
    same names and the pieces before completion), and the summary counts them."""
    from VerdiffSegmentLib.pipeline import segment

    image = read_image(xray_image())
    card = get_card("verdiff-xray")
    result = segment(image, card, device="cpu")
    models = copy_models(tmp_path / "models")
    drop_from_card(models, "verdiff-xray", "outline")
    plain = segment(image, get_card("verdiff-xray", models), device="cpu")
    assert [s.get("level") for s in result.segments] == [s.get("level") for s in plain.segments]
    assert "vertebrae_outlined" not in plain.measurements
    shape = sitk.GetArrayFromImage(image).shape
    labels, plain_labels = (sitk.GetArrayFromImage(r.labels).reshape(shape) for r in (result, plain))
    picture = sitk.GetArrayFromImage(image).astype(np.float32)
    expected, completed = outline_vertebrae(load_outline_network(card), picture, plain_labels, [int(s["value"]) for s in plain.segments])
    assert np.array_equal(labels, expected)
    assert result.measurements["vertebrae_outlined"] == len(completed) >= 0.75 * len(result.segments)
    assert np.count_nonzero(labels) > np.count_nonzero(plain_labels)


def test_training_steps_and_export_into_the_xray_cards(tmp_path):
    """Real training steps on real radiographs, warm-started from the tilt network's features,
    then export into a copy of the bundled cards: every X-ray card names the new network, its
    sha256 checks, and a changed byte is refused."""
    models = copy_models(tmp_path / "models", ["verdiff-xray", "unet-xray"])
    result = training_outline.train(DATA, tmp_path / "run", steps=3, batch_size=4, val_every=3, limit=3, init=MODELS / "endplate-tilt-xray.pt")
    assert result["step"] == 3 and result["vertebrae"] == 3 * 17
    entry = training_outline.export(tmp_path / "run" / "step3.pt", models, DATA, tmp_path / "run" / "log.json")
    assert entry["training"]["steps"] == 3 and entry["training"]["init"].endswith("endplate-tilt-xray.pt")
    for name in ("verdiff-xray", "unet-xray"):
        card = get_card(name, models)
        assert card.outline_network["sha256"] == entry["sha256"]
        corners = vertebra_outline.predict_corners(load_outline_network(card), np.zeros((300, 200), np.float32), np.array([[150.0, 100.0]]), np.array([60.0]))
        assert corners.shape == (1, 4, 2) and np.isfinite(corners).all()
    flip_a_byte(models / training_outline.WEIGHTS)
    with pytest.raises(VerdiffError, match="vertebra-outline network of model verdiff-xray do not match the sha256"):
        load_outline_network(get_card("verdiff-xray", models))


def test_a_malformed_outline_entry_is_a_card_error(tmp_path):
    card = json.loads((MODELS / "verdiff-xray.json").read_text())
    card["outline"]["network"] = "vertebra-outline-xray.pt"
    (tmp_path / "verdiff-xray.json").write_text(json.dumps(card))
    with pytest.raises(VerdiffError, match="outline.network must be an object"):
        get_card("verdiff-xray", tmp_path)


def test_pipeline_refuses_a_missing_outline_network_before_sampling(tmp_path):
    from VerdiffSegmentLib.pipeline import segment

    models = copy_models(tmp_path / "models", ["verdiff-xray", "level-map-xray.pt", "vertebra-level-xray.pt", "endplate-tilt-xray.pt"])  # all but the outline network
    card = get_card("verdiff-xray", models)
    stages = []
    with pytest.raises(VerdiffError, match="vertebra-outline network of model verdiff-xray not found"):
        segment(read_image(xray_image()), card, device="cpu", progress=lambda *stage: stages.append(stage))
    assert stages == []  # refused before any slice was sampled


def test_a_warm_start_from_weights_of_another_network_is_refused(tmp_path):
    """Only a head of another shape may differ (the tilt network's features start the outline
    network); the level map's weights share no stages with it and are refused, not half-loaded."""
    with pytest.raises(ValueError, match="does not hold this network's features"):
        training_outline.train(DATA, tmp_path / "run", steps=1, batch_size=2, val_every=1, limit=1, init=MODELS / "level-map-xray.pt")
