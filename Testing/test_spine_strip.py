"""The spine-strip level reader (VerdiffSegmentLib/spine_strip.py, training/spine_strip.py) and how
its names join the level network's (levels.united_names): geometry on real landmarks, real
training steps, export into the X-ray cards, tampered and missing weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.levels import united_names
from VerdiffSegmentLib.models import get_card, load_strip_network
from VerdiffSegmentLib.spine_strip import COLUMNS, centre_line, sample_strip, strip_log_probabilities
from VerdiffSegmentLib.vertebra_level import LEVELS
from training import spine_strip as training_strip
from training.datasets import aasce_cases
from training.vertebra_level import extended_vertebrae

from conftest import DATA, MODELS, copy_models, flip_a_byte, xray_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_centre_line_runs_through_the_pieces_and_past_the_ends():
    points = np.array([[100.0, 50.0], [120.0, 50.0], [140.0, 60.0]])
    line, arc = centre_line(points, 10.0, 2.0, 3.0)
    assert np.allclose(line[0], [80.0, 50.0]) and np.allclose(arc[0], 20.0)  # 2 widths above the top piece
    assert np.allclose(line[np.rint(arc).astype(int)], points, atol=1.0)  # each piece sits at its arc position
    last = points[-1] + (points[-1] - points[-2]) / np.linalg.norm(points[-1] - points[-2]) * 30.0
    assert np.linalg.norm(line[-1] - last) < 1.0 and np.linalg.norm(np.diff(line, axis=0), axis=1).max() <= 1.0 + 1e-6


def test_the_strip_looks_down_the_line_with_the_picture_s_right_on_its_right():
    rows, cols = np.mgrid[0:200, 0:120].astype(np.float32)
    line, _ = centre_line(np.array([[40.0, 60.0], [160.0, 60.0]]), 10.0, 0.0, 0.0)
    down = sample_strip(rows, line)[0].numpy()  # a picture brighter downwards: the strip too, row by row
    across = sample_strip(cols, line)[0].numpy()  # brighter to the right: the strip's columns too
    assert down.shape == (len(line), COLUMNS)
    for profile in (down[:, COLUMNS // 2], across[len(line) // 2]):  # rising (flat only where the percentiles clip)
        assert (np.diff(profile) >= 0).all() and profile[-1] - profile[0] > 0.9


def test_rows_are_named_by_the_nearest_level_on_the_true_centre_line():
    _, image_path, mat = aasce_cases(DATA / "xray-aasce", usable_only=True)[0]
    centres, _ = extended_vertebrae(mat)
    line, arc = centre_line(centres[1:-1], 100.0, 4.0, 4.0)  # 4 x 100 px: about three landmark steps
    levels = training_strip.row_levels(line, centres)
    at_centres = levels[np.rint(arc).astype(int)]
    assert list(at_centres) == list(range(1, 18))  # T1..L5 at their own centres
    assert levels[0] == -100 and levels[-1] == -100  # three steps past the ends: beyond C7 and S1
    assert set(levels[levels >= 0]) == set(range(19))


def test_united_names_fill_in_only_where_the_readers_agree():
    first = [None, None, "T3", "T4", "T5", None]
    assert united_names(first, ["T1", "T2", "T3", "T4", "T5", "T6"]) == ["T1", "T2", "T3", "T4", "T5", "T6"]
    assert united_names(first, ["T1", "T2", "T3", "T4", "T6", "T7"]) == first  # one piece named otherwise: the first reader's names
    assert united_names(first, [None, "T2", "T3", "T4", None, None]) == first  # two shared: too few to fix the count
    assert united_names(first, [None, "T2", "T3", "T4", None, None], least_shared=2) == [None, "T2", "T3", "T4", "T5", None]


def test_training_steps_and_export_into_the_xray_cards(tmp_path):
    """Real training steps on real radiographs, then export into a copy of the bundled cards:
    every X-ray card names the strip network, its sha256 checks, and a changed byte is refused."""
    models = copy_models(tmp_path / "models", ["verdiff-xray", "unet-xray"])
    result = training_strip.train(DATA, tmp_path / "run", steps=2, batch_size=2, val_every=2, limit=2)
    assert result["vertebrae"] == 2 * 17 and 0 <= result["named_wrong"] <= 1
    entry = training_strip.export(tmp_path / "run" / "step2.pt", models, DATA, tmp_path / "run" / "log.json")
    assert entry["training"]["steps"] == 2 and entry["network"]["levels"] == list(LEVELS)
    for name in ("verdiff-xray", "unet-xray"):
        card = get_card(name, models)
        assert card.strip_network["sha256"] == entry["sha256"]
        scores = strip_log_probabilities(load_strip_network(card), np.zeros((300, 200), np.float32), np.array([[100.0, 100.0], [150.0, 100.0]]), np.array([40.0, 40.0]))
        assert scores.shape == (2, len(LEVELS)) and np.allclose(np.exp(scores).sum(axis=1), 1.0, atol=1e-4)
    flip_a_byte(models / training_strip.WEIGHTS)
    with pytest.raises(VerdiffError, match="spine-strip network of model verdiff-xray do not match the sha256"):
        load_strip_network(get_card("verdiff-xray", models))


def test_a_strip_network_needs_the_level_network_and_a_well_formed_entry(tmp_path):
    card = json.loads((MODELS / "verdiff-xray.json").read_text())
    card["naming"]["strip_network"] = {"weights": "x.pt", "sha256": "0", "network": {"channels": [16, 32, 64, 96], "hidden": 64, "levels": list(LEVELS)}}
    del card["naming"]["level_network"]
    (tmp_path / "verdiff-xray.json").write_text(json.dumps(card))
    with pytest.raises(VerdiffError, match="naming.strip_network needs naming.level_network"):
        get_card("verdiff-xray", tmp_path)
    card = json.loads((MODELS / "verdiff-xray.json").read_text())
    card["naming"]["strip_network"] = {"weights": "x.pt", "sha256": "0", "network": {"channels": [16, 32, 64, 96], "hidden": 0, "levels": list(LEVELS)}}
    (tmp_path / "verdiff-xray.json").write_text(json.dumps(card))
    with pytest.raises(VerdiffError, match="naming.strip_network.network.hidden must be a positive whole number"):
        get_card("verdiff-xray", tmp_path)


def test_pipeline_refuses_a_missing_strip_network_before_sampling(tmp_path):
    """A card naming a strip network whose weights are gone: one error before any slice is
    sampled (the bundled cards name none yet: docs/levels.md, session 38)."""
    from VerdiffSegmentLib.pipeline import segment

    models = copy_models(tmp_path / "models", ["verdiff-xray", "level-map-xray.pt", "vertebra-level-xray.pt", "endplate-tilt-xray.pt", "vertebra-outline-xray.pt"])
    card = json.loads((models / "verdiff-xray.json").read_text())
    card["naming"]["strip_network"] = {"weights": training_strip.WEIGHTS, "sha256": "0" * 64, "network": {"channels": [16, 32, 64, 96], "hidden": 64, "levels": list(LEVELS)}}
    (models / "verdiff-xray.json").write_text(json.dumps(card))
    stages = []
    with pytest.raises(VerdiffError, match="spine-strip network of model verdiff-xray not found"):
        segment(read_image(xray_image()), get_card("verdiff-xray", models), device="cpu", progress=lambda *stage: stages.append(stage))
    assert stages == []  # refused before any slice was sampled
