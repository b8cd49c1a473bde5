"""The X-ray level map (``VerdiffSegmentLib.level_map``, ``training.level_map``): its training
target and augmentation on real landmarks, naming from coordinates, real training steps and
export into a card, the bundled map's accuracy on held-out radiographs, and tampered weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from conftest import DATA, MODELS, copy_models, flip_a_byte, xray_image  # noqa: E402
from VerdiffSegmentLib.errors import VerdiffError  # noqa: E402
from VerdiffSegmentLib.level_map import BOX, fit_geometry, fit_to_box, predict_level_map, read_back  # noqa: E402
from VerdiffSegmentLib.levels import levels_from_coordinates  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_level_map  # noqa: E402
from training import level_map  # noqa: E402
from training.xray_helpers import validation_items  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

XRAY_LEVELS = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]


def held_out_landmarks(count: int):
    return validation_items(DATA, json.loads((MODELS / "verdiff-xray.json").read_text()))[:count]


def test_target_is_each_level_at_its_centre_and_rises_down_the_spine():
    image, mat = held_out_landmarks(1)[0]
    centres, widths = level_map.vertebra_centres(mat)
    shape = (int(centres[:, 0].max() + 200), int(centres[:, 1].max() + 200))
    target, weight = level_map.coordinate_target(centres, widths, shape)
    at_centres = target[tuple(np.round(centres).astype(int).T)]
    assert np.allclose(at_centres, np.arange(1, 18), atol=0.1)
    assert (weight[tuple(np.round(centres).astype(int).T)] == 1).all()
    assert weight[0, 0] == level_map.OUTSIDE_WEIGHT  # a corner, far from the spine
    assert target[int(centres[-1, 0]) + 150, int(centres[-1, 1])] > 17.5  # under L5: S1 and on


def test_augmentation_moves_picture_and_target_together():
    """Dots painted at the vertebral centres land where the target says those levels are."""
    image, mat = held_out_landmarks(1)[0]
    picture, centres, widths = level_map.load_pictures(image.parent.parent.parent, {image.stem})[0]
    dots = np.zeros_like(picture)
    for row, col in np.round(centres).astype(int):
        dots[row - 2 : row + 3, col - 2 : col + 3] = 1.0
    for seed in range(4):
        drawn, target, weight = level_map.augmented(dots, centres, widths, np.random.default_rng(seed))
        assert drawn.shape == (1, *BOX) and target.shape == BOX
        for level in (1, 9, 17):
            near = np.abs(target.numpy() - level) < 0.35
            row, col = np.unravel_index(np.argmax(drawn[0].numpy() * near), BOX)
            assert drawn[0, row, col] > 0.5, (seed, level)  # the dot of this level lies in its band


def test_box_geometry_round_trip():
    picture = np.tile(np.linspace(0, 1, 300, dtype=np.float32)[:, None], (1, 120))  # rises down the rows
    (rows, cols), (top, left) = fit_geometry(picture.shape)
    scale = min(BOX[0] / 300, BOX[1] / 120)
    assert (rows, cols) == (round(300 * scale), round(120 * scale)) and max(rows / BOX[0], cols / BOX[1]) == 1
    assert abs(top - (BOX[0] - rows) / 2) <= 0.5 and abs(left - (BOX[1] - cols) / 2) <= 0.5  # centred
    boxed = fit_to_box(picture)
    back = read_back(boxed, picture.shape)
    assert back.shape == picture.shape
    assert np.abs(back - picture)[5:-5].max() < 0.05


def test_levels_from_coordinates():
    assert levels_from_coordinates([1.1, 2.0, 2.9, 4.2], XRAY_LEVELS) == ["T1", "T2", "T3", "T4"]
    # two pieces of one vertebra, or a map off by half a level: never one name twice, never out of order
    assert levels_from_coordinates([1.4, 1.6, 3.0], XRAY_LEVELS) == ["T1", "T2", "T3"]
    # one level past each end of the range
    assert levels_from_coordinates([-0.2, 1.0, 17.2, 18.3], XRAY_LEVELS) == ["C7", "T1", "L5", "S1"]
    # one piece far from any level it can take: undecided, the rest named
    assert levels_from_coordinates([1.0, 2.0, 3.0, 4.0, 4.0, 6.0, 7.0], XRAY_LEVELS) == ["T1", "T2", "T3", "T4", None, "T6", "T7"]
    # map and pieces disagree on average (medians half a level off): nothing named
    assert levels_from_coordinates([1.5, 2.5, 3.5, 4.5], XRAY_LEVELS) == [None] * 4
    assert levels_from_coordinates([0.5 * i for i in range(30)], XRAY_LEVELS) == [None] * 30  # more pieces than levels
    assert levels_from_coordinates([1.0, 2.0], None) == [None, None]
    # a map stretched over the pieces (two levels a step: a film that shows part of the spine): nothing named
    assert levels_from_coordinates([1.0, 3.0, 5.1, 6.9, 9.0, 11.0, 13.0], XRAY_LEVELS) == [None] * 7
    # merged pairs here and there keep the median step at one level: still named
    assert levels_from_coordinates([1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0], XRAY_LEVELS) == ["T1", "T2", "T4", "T5", "T6", "T8", "T9"]


def test_bundled_level_map_names_held_out_vertebrae():
    """On the held-out radiographs (the 47 of 48 whose landmarks describe 17 vertebrae) the
    median coordinate over each truth quadrilateral rounds to its level for the share the card
    records (0.72 at export, session 7; 0.75 with the landmarks in T1..L5 order, session 28;
    the issue asks 0.95 of the whole naming: not met). An untrained map names about 5 %."""
    card = get_card("verdiff-xray")
    scores = level_map.evaluate(load_level_map(card), held_out_landmarks(48))
    assert scores["vertebrae"] == 47 * 17
    assert scores["named_right"] >= 0.70, scores
    assert scores["named_right"] == pytest.approx(card.raw["naming"]["level_map"]["validation"]["named_right"], abs=0.01)


def test_a_missing_vertebra_is_named_around_by_the_level_map():
    """A held-out radiograph's truth bodies without T6: 16 pieces, so the count names nothing;
    the bundled level map names the other 16 right, skipping T6 (on this image; over all 48
    the map is right for 72 % of the bodies, docs/levels.md)."""
    import SimpleITK as sitk
    from PIL import Image

    from training.datasets import aasce_mask
    from VerdiffSegmentLib import levels

    image, mat = held_out_landmarks(3)[2]
    assert image.stem == "sunhl-1th-06-Jan-2017-190 A AP"
    picture = np.asarray(Image.open(image).convert("L"), np.float32)
    truth = sitk.GetArrayFromImage(aasce_mask(sitk.GetImageFromArray(picture), mat))
    without_t6 = sitk.GetImageFromArray(((truth > 0) & (truth != 6)).astype(np.uint8))
    card = get_card("verdiff-xray")
    by_count = levels.vertebrae(without_t6, "vertebral body", levels=XRAY_LEVELS, extra_vertebrae=card.extra_vertebrae)[1]
    assert [s["level"] for s in by_count] == [None] * 16
    coordinates = predict_level_map(load_level_map(card), picture)
    labels, segments = levels.vertebrae(without_t6, "vertebral body", levels=XRAY_LEVELS, extra_vertebrae=card.extra_vertebrae, coordinates=coordinates)
    assert [s["level"] for s in segments] == [level for level in XRAY_LEVELS if level != "T6"]
    named = sitk.GetArrayFromImage(labels)
    for segment in segments:  # each name sits on its truth body
        assert np.median(truth[named == segment["value"]]) == XRAY_LEVELS.index(segment["level"]) + 1


def test_a_lumbar_film_gets_no_thoracic_names_from_the_level_map():
    """A held-out radiograph cut to start at the middle of T11, as a lumbar AP film would: the
    level map reads any picture as T1 at its top and L5 at its bottom, and before its step check
    it named these seven bodies T1, T2, T4 ... T10 (docs/levels.md, session 24). Now no body gets
    a wrong level."""
    import SimpleITK as sitk

    from training.datasets import aasce_mask
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.levels import level_scores
    from VerdiffSegmentLib.pipeline import segment

    image, mat = next(item for item in held_out_landmarks(48) if item[0].stem == "sunhl-1th-10-Jan-2017-241 A AP")
    picture = read_image(image)
    truth = sitk.GetArrayFromImage(aasce_mask(picture, mat))
    start = int(np.nonzero((truth == XRAY_LEVELS.index("T11") + 1).any(axis=1))[0].mean())
    result = segment(picture[:, start:], get_card("verdiff-xray"), device="cpu")
    truth = truth[start:]
    present = {k + 1: level for k, level in enumerate(XRAY_LEVELS) if (truth == k + 1).any()}
    assert len(result.segments) >= 5  # the lumbar bodies are drawn
    scores = level_scores(sitk.GetArrayFromImage(result.labels).reshape(truth.shape), {s["value"]: s["level"] for s in result.segments}, truth, present)
    assert scores["wrongly_named"] == 0, [s["level"] for s in result.segments]


def test_segment_loads_the_level_map_and_keeps_names_in_order():
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.levels import EXTENDED_LEVELS
    from VerdiffSegmentLib.pipeline import segment

    result = segment(read_image(xray_image()), get_card("verdiff-xray"), device="cpu")
    named = [EXTENDED_LEVELS.index(s["level"]) for s in result.segments if s["level"]]
    assert named == sorted(set(named))  # top-down, each level once


def test_training_steps_and_export_into_the_xray_cards(tmp_path):
    """Real training steps on real radiographs, then export into a copy of the bundled cards:
    every X-ray card names the new map, its sha256 checks, and a changed byte is refused."""
    models = copy_models(tmp_path / "models", ["verdiff-xray", "unet-xray"])
    result = level_map.train(DATA, tmp_path / "run", steps=3, batch_size=2, val_every=3, limit=3)
    assert result["step"] == 3 and result["vertebrae"] == 3 * 17
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    entry = level_map.export(tmp_path / "run" / "step3.pt", models, DATA, tmp_path / "run" / "log.json")
    assert entry["training"]["steps"] == log["steps"] == 3
    for name in ("verdiff-xray", "unet-xray"):
        card = get_card(name, models)
        assert card.level_map["sha256"] == entry["sha256"]
        network = load_level_map(card)
        assert predict_level_map(network, np.zeros((200, 80), np.float32)).shape == (200, 80)
    flip_a_byte(models / level_map.WEIGHTS)
    with pytest.raises(VerdiffError, match="level map of model verdiff-xray do not match the sha256"):
        load_level_map(get_card("verdiff-xray", models))


def test_a_malformed_level_map_entry_is_a_card_error(tmp_path):
    card = json.loads((MODELS / "verdiff-xray.json").read_text())
    card["naming"]["level_map"] = {"weights": "x.pt", "sha256": "0", "network": {"channels": [8, 16, 32, 64, 128]}, "box": [100, 64]}
    (tmp_path / "verdiff-xray.json").write_text(json.dumps(card))
    with pytest.raises(VerdiffError, match="level_map.box"):
        get_card("verdiff-xray", tmp_path)
    card["naming"]["level_map"] = "level-map-xray.pt"
    (tmp_path / "verdiff-xray.json").write_text(json.dumps(card))
    with pytest.raises(VerdiffError, match="naming.level_map must be an object"):
        get_card("verdiff-xray", tmp_path)


def test_pipeline_refuses_a_missing_level_map_before_sampling(tmp_path):
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.pipeline import segment

    models = copy_models(tmp_path / "models", ["verdiff-xray"])
    card = get_card("verdiff-xray", models)
    stages = []
    with pytest.raises(VerdiffError, match="level map of model verdiff-xray not found"):
        segment(read_image(xray_image()), card, device="cpu", progress=lambda *stage: stages.append(stage))
    assert stages == []  # refused before any slice was sampled
    binary = segment(read_image(xray_image()), card, device="cpu", per_vertebra=False)  # needs no level map
    assert len(binary.segments) == 1
