"""``export`` and ``evaluate`` on a tiny run: the card's sha256, fp16 weights that load with
``weights_only=True`` through ``models.load_network``, and Dice/IoU/HD95/NSD figures.

The run trains and validates on two real MR volumes cut to a central slab of sagittal slices
(``slab_data``): every export and evaluation here segments its case through ``segment``, and a
whole volume costs five times the slices while checking nothing more."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from VerdiffSegmentLib.models import get_card, load_network, sha256_of
from training.__main__ import main
from training.configs import RunConfig, recipe_config
from training.evaluate import unseen_patient_figures
from training.export import training_command
from training.train import TrainOptions, train


SLAB_SLICES = 16  # of 77 sagittal slices (1 mm): the middle of the lumbar bodies
TINY_RUN = {  # a small network on the slabs, VB3_17 held out
    "name": "tiny-mr",
    "recipe": "verdiff-mr",
    "channels": [8, 16, 32],
    "split": {"validation_subjects": ["VB3_17"]},
    "datasets": [{"images": "mr-lumbar-vb3/*_img.nii.gz", "labels": "mr-lumbar-vb3/*_seg.nii.gz", "source": "lumbar-1-5", "include": ["VB3_01", "VB3_17"]}],
}


@pytest.fixture(scope="module")
def slab_data(tmp_path_factory, data_dir):
    """A data root holding VB3_01 and VB3_17 (images and labels) cut to their central
    ``SLAB_SLICES`` sagittal slices, under the same names as in ../shared/data."""
    root = tmp_path_factory.mktemp("data")
    (root / "mr-lumbar-vb3").mkdir()
    for subject in ("VB3_01", "VB3_17"):
        for kind in ("img", "seg"):
            name = f"mr-lumbar-vb3/{subject}_{kind}.nii.gz"
            volume = sitk.ReadImage(str(data_dir / name))
            # the index axis that runs left-right (largest x component of its direction)
            axis = int(np.argmax(np.abs(np.array(volume.GetDirection()).reshape(3, 3)[0])))
            start = (volume.GetSize()[axis] - SLAB_SLICES) // 2
            slab = volume[tuple(slice(start, start + SLAB_SLICES) if a == axis else slice(None) for a in range(3))]
            sitk.WriteImage(slab, str(root / name))
    slab = sitk.ReadImage(str(root / "mr-lumbar-vb3" / "VB3_17_seg.nii.gz"))
    assert sitk.GetArrayViewFromImage(slab).any(), "the slab must cut through the vertebral bodies"
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, slab_data):
    """Three steps on VB3_01, VB3_17 held out: a model to export, not a good one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = RunConfig.from_dict(TINY_RUN)
    out = tmp_path_factory.mktemp("run")
    train(run, slab_data, out, TrainOptions(steps=3, batch_size=2, crop=48, tensorboard=False))
    yield out
    torch.set_num_threads(threads)


def test_export_writes_fp16_weights_where_validation_dice_holds(tmp_path, tiny_run, slab_data, capsys):
    main(["export", "tiny-mr", "--run", str(tiny_run), "--models-dir", str(tmp_path), "--data", str(slab_data), "--steps", "1", "--ensemble", "1"])
    card = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    assert card["sha256"] == sha256_of(tmp_path / "tiny-mr.pt")
    export = card["export"]
    assert export["precision"] == ("fp16" if export["fp16_dice_mean"] >= export["fp32_dice_mean"] - export["tolerance"] else "fp32")
    state = torch.load(tmp_path / "tiny-mr.pt", weights_only=True)
    expected = torch.float16 if export["precision"] == "fp16" else torch.float32
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {expected}
    network = load_network(get_card("tiny-mr", tmp_path))
    assert all(p.dtype == torch.float32 for p in network.parameters())
    validation = card["validation"]
    assert [c["case"] for c in validation["cases"]] == ["VB3_17"] and validation["units"] == "mm"
    for key in ("dice_mean", "iou_mean", "nsd_mean", "dice_sd"):
        assert 0 <= validation[key] <= 1
    assert card["training"]["split"]["validation"] == ["VB3_17"] and card["training"]["config"]["name"] == "tiny-mr"
    assert card["defaults"] == {"steps": 1, "ensemble": 1} and card["network"]["channels"] == [8, 16, 32]
    printed = json.loads(capsys.readouterr().out)
    assert printed["dice_mean"] == validation["dice_mean"]


def test_defaults_revalidates_the_card_and_keeps_the_figures_it_replaces(tmp_path, tiny_run, slab_data, capsys):
    main(["export", "tiny-mr", "--run", str(tiny_run), "--models-dir", str(tmp_path), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--precision", "fp32"])
    before = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    common = ["--models-dir", str(tmp_path), "--data", str(slab_data)]
    with pytest.raises(SystemExit):  # 200 steps cannot fit below timestep 150: refused before any work
        main(["defaults", "tiny-mr", "--steps", "200", "--ensemble", "2", "--start-timestep", "150", *common])
    assert json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8")) == before
    main(["defaults", "tiny-mr", "--steps", "1", "--ensemble", "2", "--start-timestep", "150", *common])
    card = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    assert card["defaults"] == {"steps": 1, "ensemble": 2} and card["scheduler"]["start_timestep"] == 150
    assert card["sha256"] == before["sha256"] == sha256_of(tmp_path / "tiny-mr.pt")
    assert card["validation"]["settings"] == {"steps": 1, "ensemble": 2, "seed": 0, "start_timestep": 150}
    assert card["validation_history"][0]["settings"] == before["validation"]["settings"]
    assert card["validation_history"][0]["dice_mean"] == before["validation"]["dice_mean"]
    assert get_card("tiny-mr", tmp_path).default_ensemble == 2


def test_soup_averages_weights_fine_tuned_from_a_card_and_revalidates_it(tmp_path, tiny_run, slab_data, capsys):
    """``soup``: the exported tiny card's weights, a run of two steps fine-tuned from them, and
    that run's resumable checkpoint; the card's weights become their element-wise mean (in
    fp16), its sha256, history (the run's stage, then the soup), command and validation follow,
    and the figures it replaces are kept. Weights of another network, or a re-validation that
    cannot run, leave the card and its weights as they were."""
    main(["export", "tiny-mr", "--run", str(tiny_run), "--models-dir", str(tmp_path), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--precision", "fp32"])
    card_path, weights = tmp_path / "tiny-mr.json", tmp_path / "tiny-mr.pt"
    before = json.loads(card_path.read_text(encoding="utf-8"))
    kept = tmp_path / "bundled-before.pt"
    kept.write_bytes(weights.read_bytes())
    tuned = tmp_path / "tuned"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(RunConfig.from_dict(TINY_RUN), slab_data, tuned, TrainOptions(steps=2, batch_size=2, crop=48, tensorboard=False, init=str(weights), seed=7, lr=1e-2),
              command=f"python -m training train --init {weights} (test)")
    finally:
        torch.set_num_threads(threads)
    ingredients = [kept, tuned / "model.pt", tuned / "checkpoint.pt"]
    start, moved = torch.load(kept, weights_only=True), torch.load(tuned / "model.pt", weights_only=True)
    expected = {k: (v.float() + 2 * moved[k].float()) / 3 for k, v in start.items() if v.is_floating_point()}
    assert any(not torch.equal(v, start[k].float()) for k, v in expected.items()), "the tuned run must have moved"

    other = tmp_path / "other.pt"
    torch.save({"prior_net.only": torch.zeros(3)}, other)
    with pytest.raises(SystemExit):
        main(["soup", "tiny-mr", str(kept), str(other), "--models-dir", str(tmp_path), "--data", str(slab_data)])
    assert json.loads(card_path.read_text(encoding="utf-8")) == before and weights.read_bytes() == kept.read_bytes()
    with pytest.raises((SystemExit, OSError)):  # no validation data: the re-validation cannot run
        main(["soup", "tiny-mr", *map(str, ingredients), "--models-dir", str(tmp_path), "--data", str(tmp_path / "no-data")])
    assert json.loads(card_path.read_text(encoding="utf-8")) == before and weights.read_bytes() == kept.read_bytes()

    capsys.readouterr()
    main(["soup", "tiny-mr", *map(str, ingredients), "--models-dir", str(tmp_path), "--data", str(slab_data)])
    card = json.loads(card_path.read_text(encoding="utf-8"))
    state = torch.load(weights, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    for key, value in expected.items():
        assert torch.allclose(state[key].float(), value, atol=2e-3, rtol=2e-3), key
    assert card["sha256"] == sha256_of(weights) != before["sha256"]
    history = card["training"]["history"]
    assert history[:-2] == before["training"]["history"]
    assert history[-2]["optimiser_steps"] == 2 and history[-1]["optimiser_steps"] == 0 and "average of 3" in history[-1]["what"]
    assert card["training"]["command"].startswith(before["training"]["command"] or history[-2]["command"])
    assert card["training"]["command"].endswith(history[-1]["command"])
    assert card["training"]["cumulative"]["optimiser_steps"] == before["training"]["cumulative"]["optimiser_steps"] + 2
    assert card["validation_history"][-1]["dice_mean"] == before["validation"]["dice_mean"]
    assert card["validation"]["settings"]["steps"] == 1 and [c["case"] for c in card["validation"]["cases"]] == ["VB3_17"]
    assert json.loads(capsys.readouterr().out)["dice_mean"] == card["validation"]["dice_mean"]
    network = load_network(get_card("tiny-mr", tmp_path))
    assert all(p.dtype == torch.float32 for p in network.parameters())


def test_evaluate_a_run_on_its_split_and_on_a_folder(tmp_path, tiny_run, slab_data, capsys):
    out = tmp_path / "figures.json"
    main(["evaluate", "--run", str(tiny_run), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--out", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["evaluated_on"] == "validation split" and len(result["cases"]) == 1
    row = result["cases"][0]
    assert set(row) >= {"case", "dice", "iou", "hd95", "nsd"}
    assert row["hd95"] is None or row["hd95"] > 0  # mm
    capsys.readouterr()
    main(["evaluate", "--run", str(tiny_run), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--images", "mr-lumbar-vb3/*_img.nii.gz",
          "--labels", "mr-lumbar-vb3/*_seg.nii.gz", "--source", "lumbar-1-5", "--limit", "1"])
    folder = json.loads(capsys.readouterr().out)
    assert folder["cases"][0]["case"] == "VB3_01" and folder["evaluated_on"].startswith("folder")


def test_evaluate_a_bundled_model_on_cross_source_suites(tmp_path, data_dir):
    """``evaluate --suite``: the bundled MR model on one clinical 2D slice of another source and
    one held-out subject inverted (dark and bright tissues swapped), through the suites' one
    path (``evaluate_suites``, which ``export --suites`` takes too)."""
    out = tmp_path / "suites.json"
    main(["evaluate", "verdiff-mr", "--suite", "clinical-sagittal,inverted", "--limit", "1", "--data", str(data_dir), "--out", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["dice_by_suite"]) == {"clinical-sagittal", "inverted"}
    assert [len(result["suites"][s]["cases"]) for s in ("clinical-sagittal", "inverted")] == [1, 1]
    assert result["suites"]["inverted"]["dice_mean"] > 0.7  # the any-contrast model: 0.83 on the 8 held-out subjects
    assert result["suites"]["clinical-sagittal"]["model"] == "verdiff-mr-2d"  # the 2.5D default's planar model segments the 2D slices
    assert "model" not in result["suites"]["inverted"]  # volumes: the 2.5D model itself


def test_a_second_stage_card_records_both_commands(tmp_path):
    first, second = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    first.mkdir(parents=True)
    second.mkdir()
    (first / "command.txt").write_text("python -m training train verdiff-xray --out runs/a --steps 10\n")
    (second / "command.txt").write_text("python -m training train verdiff-xray --out runs/b --init runs/a/model.pt --steps 5\n")
    assert training_command(second) == "python -m training train verdiff-xray --out runs/a --steps 10 && python -m training train verdiff-xray --out runs/b --init runs/a/model.pt --steps 5"


def test_a_stage_warm_started_from_a_bundled_model_records_its_cards_command_first(tmp_path):
    from VerdiffSegmentLib.models import read_card

    from conftest import MODELS

    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    (run / "command.txt").write_text(f"python -m training train verdiff-xray --out runs/c --init {MODELS / 'verdiff-xray.pt'} --train-steps 5\n")
    earlier = read_card(MODELS / "verdiff-xray.json").training["command"]
    assert earlier.startswith("python -m training train")
    assert training_command(run) == f"{earlier} && python -m training train verdiff-xray --out runs/c --init {MODELS / 'verdiff-xray.pt'} --train-steps 5"


def test_xray_recipe_reports_held_out_images_of_unseen_patients_apart():
    split = {"train": ["sunhl-1th-02-Jan-2017-162 B AP", "sunhl-1th-20-Jul-2016-coronal1"]}
    result = {"cases": [{"case": "sunhl-1th-02-Jan-2017-162 A AP", "dice": 0.9}, {"case": "sunhl-1th-05-Jan-2017-167 A AP", "dice": 0.7},
                        {"case": "sunhl-1th-20-Jul-2016-coronal2", "dice": 0.5}]}
    figures = unseen_patient_figures(result, recipe_config("verdiff-xray"), split)
    assert figures == {"unseen_patients": 2, "dice_mean_unseen_patients": 0.6, "dice_sd_unseen_patients": 0.1}
    assert unseen_patient_figures(result, recipe_config("verdiff-mr"), split) == {}


def test_a_warm_started_card_adds_up_every_stage(tmp_path, tiny_run, slab_data):
    """Training that accumulates (issue 16): a run started --init from an exported model continues
    it with the card's architecture, and the new card's history holds both stages and their sums."""
    main(["export", "tiny-mr", "--run", str(tiny_run), "--models-dir", str(tmp_path), "--data", str(slab_data), "--steps", "1", "--ensemble", "1",
          "--precision", "fp32", "--start-timestep", "150"])
    first = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    assert first["scheduler"]["start_timestep"] == 150 and first["validation"]["settings"]["start_timestep"] == 150
    assert first["training"]["cumulative"]["optimiser_steps"] == 3 and len(first["training"]["history"]) == 1
    with pytest.raises(SystemExit):  # the card's channels are 8,16,32: other channels cannot continue it
        main(["train", "--config", "unused.toml", "--out", str(tmp_path / "x"), "--init", str(tmp_path / "tiny-mr.pt"), "--channels", "4,8"])
    second = tmp_path / "second"
    main(["train", "verdiff-mr", "--images", "mr-lumbar-vb3/*_img.nii.gz", "--labels", "mr-lumbar-vb3/*_seg.nii.gz", "--source", "lumbar-1-5",
          "--name", "tiny-mr", "--data", str(slab_data), "--out", str(second), "--init", str(tmp_path / "tiny-mr.pt"), "--steps", "2",
          "--batch-size", "2", "--crop", "48", "--limit", "1", "--threads", "1", "--no-tensorboard"])
    run = json.loads((second / "run.json").read_text(encoding="utf-8"))
    assert run["config"]["channels"] == [8, 16, 32] and run["settings"]["threads"] == 1
    from training.export import cumulative_training, training_history

    history = training_history(second, run)
    assert [stage["optimiser_steps"] for stage in history] == [3, 2] and history[1]["init"] == str(tmp_path / "tiny-mr.pt")
    total = cumulative_training(history)
    assert total["optimiser_steps"] == 5 and total["stages"] == 2 and total["cpu_core_hours"] > 0


def test_a_2_5d_fine_tune_of_the_bundled_mr_model_exports_a_card_verdiff_segment_runs(tmp_path, slab_data, data_dir):
    """Two real optimiser steps of a 2.5D run warm-started from the bundled MR model
    (``--context-slices 1``, crops edge-padded by up to 8 px), exported with ``context_slices: 1``
    and ``edge_padding_px: 4`` (half the trained range) in its card, then ``verdiff segment`` end
    to end on a whole real MR volume, its slices padded; the same card refuses an X-ray."""
    import os
    import subprocess
    import sys

    from conftest import MODELS, xray_image

    run, models = tmp_path / "run", tmp_path / "models"
    models.mkdir()
    (models / "mr-context.json").write_text(json.dumps({"input": {"planar_model": "verdiff-mr"}}))  # the card it replaces names a planar model
    threads = torch.get_num_threads()
    try:
        main(["train", "verdiff-mr", "--images", "mr-lumbar-vb3/*_img.nii.gz", "--labels", "mr-lumbar-vb3/*_seg.nii.gz", "--source", "lumbar-1-5",
              "--name", "mr-context", "--validation-fraction", "0.5", "--init", str(MODELS / "verdiff-mr.pt"), "--context-slices", "1", "--edge-pad", "8",
              "--train-steps", "2", "--limit", "1", "--batch-size", "2", "--crop", "64", "--threads", "1", "--no-tensorboard",
              "--data", str(slab_data), "--out", str(run)])
        main(["export", "mr-context", "--run", str(run), "--models-dir", str(models), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--precision", "fp32"])
    finally:
        torch.set_num_threads(threads)
    card = json.loads((models / "mr-context.json").read_text(encoding="utf-8"))
    assert card["input"]["context_slices"] == 1 and card["network"]["in_channels"] == 3
    assert card["input"]["planar_model"] == "verdiff-mr"  # carried: a choice of the bundle, not of the weights
    assert card["training"]["cumulative"]["optimiser_steps"] > 2  # the bundled model's steps, then these 2
    assert card["training"]["history"][-1]["optimiser_steps"] == 2
    assert card["input"]["edge_padding_px"] == 4 and card["training"]["settings"]["edge_pad"] == 8
    assert get_card("mr-context", models).context_slices == 1 and get_card("mr-context", models).edge_padding == 4

    environment = {**os.environ, "VERDIFF_MODELS_DIR": str(models)}

    def verdiff(image, out):
        return subprocess.run([sys.executable, "-m", "VerdiffSegmentLib.cli", "segment", str(image), "-o", str(out), "--model", "mr-context", "--volumes-only", "--json"],
                              capture_output=True, text=True, env=environment, timeout=600)

    image = data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"
    done = verdiff(image, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "mr-context" and report["slices"] == sitk.ReadImage(str(image)).GetSize()[2]
    labels = sitk.ReadImage(report["outputs"]["labels"])
    assert labels.GetSize() == sitk.ReadImage(str(image)).GetSize() and sitk.GetArrayViewFromImage(labels).any()
    refused = verdiff(xray_image(), tmp_path / "xray")
    assert refused.returncode == 2 and "neighbouring sagittal slice(s) on each side" in refused.stderr and not (tmp_path / "xray").exists()
    assert "such as verdiff-mr" in refused.stderr


def test_export_over_a_card_keeps_its_post_processing_and_validates_through_it(tmp_path, tiny_run, slab_data):
    """A card replaced by a new export keeps ``postprocess``, its edge padding and its tiles (sized
    by the new run's crop; not the
    reliability threshold, which was calibrated on the old weights), and the new figures are
    computed with them."""
    common = ["--run", str(tiny_run), "--models-dir", str(tmp_path), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--precision", "fp32"]
    main(["export", "tiny-mr", *common])
    plain = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    assert "postprocess" not in plain
    settings = {"spine_bridge_mm": 15, "probability_slice_sigma_mm": 1.5, "uncertainty_sigma_mm": [2.0, 1.0]}
    plain["postprocess"] = settings
    plain["reliability"] = {"self_dice_warning": 0.91}
    plain["input"].update(edge_padding_px=16, edge_padding_sides="superior")
    field_of_view = {"typical": 256, "pixels": [192, 320]}
    plain["input"]["picture_field_of_view_mm"] = field_of_view  # how a 2D picture is read: a bundle decision too
    plain["input"].update(tile_px=512, tile_padding="zeros")  # sampled in tiles: kept, at the new run's crop
    (tmp_path / "tiny-mr.json").write_text(json.dumps(plain, indent=2), encoding="utf-8")
    main(["export", "tiny-mr", *common])
    card = json.loads((tmp_path / "tiny-mr.json").read_text(encoding="utf-8"))
    assert card["postprocess"] == settings and "reliability" not in card
    assert card["input"]["edge_padding_px"] == 16 and card["input"]["edge_padding_sides"] == "superior"  # carried too
    assert card["input"]["picture_field_of_view_mm"] == field_of_view
    assert card["input"]["tile_px"] == card["training"]["settings"]["crop"] != 512 and card["input"]["tile_padding"] == "zeros"
    assert card["sha256"] == plain["sha256"]  # the same weights: only the post-processing differs
    # the same weights and noise give other figures: they were computed through the post-processing
    figures = lambda c: {k: v for k, v in c["validation"]["cases"][0].items() if k != "seconds"}  # noqa: E731
    assert figures(card) != figures(plain)


def test_a_levels_run_warm_started_from_the_bundled_mr_model_exports_a_card_whose_segments_are_its_levels(tmp_path, slab_data):
    """Two real optimiser steps of a ``--label-scheme levels`` (L1..L5) run warm-started from
    the bundled binary 2.5D MR model (``spread_to_levels``), exported: the card has one label
    per level, and ``segment`` on a real MR slab gives segments named by those labels
    (``level_source`` "labels"), one label value per level, the union on the input grid."""
    from conftest import MODELS
    from VerdiffSegmentLib.pipeline import segment

    run, models = tmp_path / "run", tmp_path / "models"
    models.mkdir()
    threads = torch.get_num_threads()
    try:
        main(["train", "verdiff-mr", "--images", "mr-lumbar-vb3/*_img.nii.gz", "--labels", "mr-lumbar-vb3/*_seg.nii.gz", "--source", "lumbar-1-5",
              "--name", "mr-levels", "--validation-fraction", "0.5", "--init", str(MODELS / "verdiff-mr.pt"), "--context-slices", "1",
              "--label-scheme", "levels", "--levels", "L1,L2,L3,L4,L5",
              "--train-steps", "2", "--limit", "1", "--batch-size", "2", "--crop", "64", "--threads", "1", "--no-tensorboard",
              "--data", str(slab_data), "--out", str(run)])
        main(["export", "mr-levels", "--run", str(run), "--models-dir", str(models), "--data", str(slab_data), "--steps", "1", "--ensemble", "1", "--precision", "fp32"])
        card = get_card("mr-levels", models)
        assert [label["name"] for label in card.labels] == [f"L{k} vertebral body" for k in range(1, 6)] and card.num_classes == 5
        image = sitk.ReadImage(str(slab_data / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))
        result = segment(image, card, device="cpu")
    finally:
        torch.set_num_threads(threads)
    labels = sitk.GetArrayFromImage(result.labels)
    assert labels.shape == sitk.GetArrayViewFromImage(image).shape and labels.any()
    assert set(np.unique(labels).tolist()) - {0} <= {1, 2, 3, 4, 5}
    assert result.segments and all(s["level_source"] == "labels" and s["name"] == f"{s['level']} vertebral body" for s in result.segments)
    assert {s["value"] for s in result.segments} >= set(np.unique(labels).tolist()) - {0}


def test_an_export_over_the_bundled_xray_card_keeps_its_tilt_network_and_picture_reading():
    """What the X-ray card's export carries from the card it replaces: the level networks
    (``naming``), the endplate-tilt network (``cobb``, the Cobb angles' tilts) and how a
    radiograph's pixels are read (``input.radiograph``); before session 26 the last two were
    dropped, so a retrained X-ray model would have lost its Cobb tilts and read a DICOM
    radiograph's 0.15 mm pixels as training pixels. It keeps sampling in tiles
    (``input.tile_px``, session 27), sized by the new run's crop as the bundled tile is by its own."""
    from training.export import carried_settings

    path = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "verdiff-xray.json"
    bundled = json.loads(path.read_text(encoding="utf-8"))
    carried = carried_settings(path)
    assert carried["cobb"] == bundled["cobb"] and carried["naming"] == bundled["naming"]
    assert carried["picture_reading"] == {"radiograph": bundled["input"]["radiograph"]}
    assert carried["tiles"] == {"tile_padding": "zeros"} and bundled["input"]["tile_px"] == bundled["training"]["settings"]["crop"]

