"""The training package on real dev data: it learns, resumes bit-exactly (also after a kill),
runs data-parallel with the same result as one process, and every data adapter reads
what its source means. Runs are tiny (few steps, small crops, one subject, 1 thread)."""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import scipy.io
import scipy.ndimage as ndi
import torch

from VerdiffSegmentLib.inferers.sagittal import from_sagittal_stack, sagittal_reference
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.networks import VerdiffNet
from training import datasets
from training.augment import PRESETS
from training.configs import RECIPES, RunConfig, load_config, recipe_config
from training.labels import LabelScheme, source_levels
from training.sampler import SliceSampler, pad_up_to
from training.splits import MR_VALIDATION, split_subjects
from training.objectives import objective_for
from training.train import RESUME_KEYS, TrainOptions, train

from conftest import MODELS, REPO

TINY = (8, 16, 32)
TINY_ARGS = ["--crop", "48", "--batch-size", "2", "--threads", "1", "--limit", "1", "--channels", "8,16,32", "--augmentation", "paper", "--no-tensorboard", "--log-every", "1"]


def tiny_options(**changes) -> TrainOptions:
    """The settings TINY_ARGS give on the command line."""
    base = dict(batch_size=2, crop=48, limit=1, augmentation="paper", tensorboard=False, log_every=1, checkpoint_every=100)
    return TrainOptions(**{**base, **changes})


def mr_run() -> RunConfig:
    return recipe_config("verdiff-mr", channels=TINY)


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def log_rows(run_dir):
    with open(run_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """A 10-step run without interruption: the reference of the resume tests."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(mr_run(), data_dir, out, tiny_options(steps=10))
    return out


# -- the loop ----------------------------------------------------------------------------
def test_validation_in_tiles_samples_as_a_tiled_card_does(tmp_path, data_dir):
    """``TrainOptions.val_tiles`` (the bundled X-ray and CT cards' runs; ``validation_sampling``):
    the same 2-step run validated on one held-out MR subject whole and in tiles of its 48 px
    crop gives other figures (the tiles reach the network through the run's validation card),
    each a real Dice."""
    figures = []
    for tiles in (None, "none"):
        out = tmp_path / str(tiles)
        options = tiny_options(steps=2, val_every=2, val_limit=1, val_steps=1, val_ensemble=1, val_start_timestep=150, val_tiles=tiles)
        train(mr_run(), data_dir, out, options)
        with open(out / "validation.csv", newline="") as rows:
            figures.append(float(list(csv.DictReader(rows))[-1]["dice"]))
    assert all(0 <= f <= 1 for f in figures) and figures[0] != figures[1], figures


def test_a_tiny_model_trained_a_few_steps_lowers_the_loss(tmp_path, data_dir):
    """Loss on a fixed batch of real MR slices (fixed timesteps and noise) before and after 40 steps."""
    run = mr_run()
    train(run, data_dir, tmp_path, TrainOptions(steps=40, batch_size=4, crop=64, limit=1, augmentation="none", tensorboard=False))
    cases, _ = datasets.training_cases(run, data_dir, limit=1)
    image, mask = SliceSampler(cases, 64, seed=123, augmentation=PRESETS["none"]).batch(8)
    t = torch.linspace(0, 999, 8).long()
    noise = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))

    def fixed_batch_loss(network):
        with torch.no_grad():
            return objective_for("verdiff-net", network.train())(image, mask, t, noise)["total"].item()

    torch.manual_seed(35)  # the run's initial weights
    initial = VerdiffNet(channels=TINY)
    trained = VerdiffNet(channels=TINY)
    trained.load_state_dict(load_weights(tmp_path / "model.pt"))
    before, after = fixed_batch_loss(initial), fixed_batch_loss(trained)
    assert after < 0.75 * before, (before, after)


def test_resume_continues_bit_exactly(tmp_path, data_dir, uninterrupted):
    first = train(mr_run(), data_dir, tmp_path, tiny_options(steps=10, stop_after=4))
    assert first.name == "checkpoint.pt" and not (tmp_path / "model.pt").exists()
    train(mr_run(), data_dir, tmp_path, tiny_options(steps=10, resume=True))
    reference, resumed = load_weights(uninterrupted / "model.pt"), load_weights(tmp_path / "model.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert [r["step"] for r in log_rows(tmp_path)] == [str(s) for s in range(1, 11)]
    assert log_rows(tmp_path)[-1]["total"] == log_rows(uninterrupted)[-1]["total"]


def test_a_killed_run_resumes_bit_exactly(tmp_path, data_dir, uninterrupted):
    """SIGKILL a CLI run at an arbitrary moment after its first checkpoint (one per step, written
    atomically), then resume: the weights equal the uninterrupted run's."""
    command = [sys.executable, "-m", "training", "train", "verdiff-mr", "--out", str(tmp_path), "--data", str(data_dir), "--steps", "10", "--checkpoint-every", "1", *TINY_ARGS]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not (tmp_path / "checkpoint.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "model.pt").exists()
    killed_at = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["progress"]["step"]
    assert 1 <= killed_at < 10
    train(mr_run(), data_dir, tmp_path, tiny_options(steps=10, resume=True, checkpoint_every=1))
    reference, resumed = load_weights(uninterrupted / "model.pt"), load_weights(tmp_path / "model.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_run_killed_inside_a_checkpoint_write_resumes_bit_exactly(tmp_path, data_dir, uninterrupted):
    """SIGKILL while ``checkpoint.pt.tmp`` is being written over an earlier complete checkpoint:
    the half-written file never replaces ``checkpoint.pt``, and ``--resume`` continues
    bit-exactly from the last complete one, over the half file a kill leaves behind.

    The tiny model's write takes milliseconds, so polling for it is a race (it failed CI
    once). Instead, once the first checkpoint is on disk, ``checkpoint.pt.tmp`` is made a
    named pipe: the run's next write opens it and blocks once the pipe's 64 KiB buffer is
    full (the checkpoint is ~1.6 MB), the test reads a first part of it and kills the run
    there, then puts those bytes back as the regular half file a kill mid-write leaves."""
    checkpoint, temporary = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.pt.tmp"
    command = [sys.executable, "-m", "training", "train", "verdiff-mr", "--out", str(tmp_path), "--data", str(data_dir), "--steps", "10", "--checkpoint-every", "1", *TINY_ARGS]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while not checkpoint.exists():
            assert process.poll() is None and time.time() < deadline, "the run wrote no first checkpoint"
            time.sleep(0.005)
        while True:  # between two writes: no .tmp exists, the pipe can take its name
            try:
                os.mkfifo(temporary)
                break
            except FileExistsError:
                assert process.poll() is None and time.time() < deadline, "the run ended before the pipe was made"
        reader = os.open(temporary, os.O_RDONLY | os.O_NONBLOCK)  # opens without a writer
        written = b""
        while len(written) < 4096:
            assert process.poll() is None and time.time() < deadline, "the run ended outside a checkpoint write"
            try:
                written += os.read(reader, 65536)  # b"" until the run opens the pipe
            except BlockingIOError:
                pass
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait()
        os.close(reader)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    temporary.unlink()
    temporary.write_bytes(written)  # what the disk holds after a kill mid-write
    with pytest.raises(Exception):
        torch.load(temporary, weights_only=True)
    killed_at = torch.load(checkpoint, weights_only=True)["progress"]["step"]
    assert 1 <= killed_at < 10 and not (tmp_path / "model.pt").exists()
    train(mr_run(), data_dir, tmp_path, tiny_options(steps=10, resume=True, checkpoint_every=1))
    assert not temporary.exists()
    reference, resumed = load_weights(uninterrupted / "model.pt"), load_weights(tmp_path / "model.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_init_starts_from_an_earlier_runs_weights(tmp_path, data_dir, uninterrupted):
    """``--init``: a second stage starts from the first stage's weights (lr 0 keeps them as they are)."""
    train(mr_run(), data_dir, tmp_path, tiny_options(steps=1, lr=0.0, init=str(uninterrupted / "model.pt")))
    earlier, now = load_weights(uninterrupted / "model.pt"), load_weights(tmp_path / "model.pt")
    assert all(torch.equal(earlier[k], now[k]) for k in earlier if "running" not in k and "num_batches" not in k)


def test_resume_refuses_other_settings(tmp_path, data_dir):
    train(mr_run(), data_dir, tmp_path, tiny_options(steps=3, stop_after=1))
    with pytest.raises(ValueError, match="lr"):
        train(mr_run(), data_dir, tmp_path, tiny_options(steps=3, resume=True, lr=5e-4))


def test_a_diverging_loss_stops_naming_the_step(tmp_path, data_dir):
    with pytest.raises(FloatingPointError, match=r"not finite at step \d+"):
        train(mr_run(), data_dir, tmp_path, tiny_options(steps=5, lr=1e12, clip_grad=0))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, data_dir, accumulate):
    """torchrun, 2 CPU processes (gloo) x batch 2 against 1 process x batch 4 (each step of K
    accumulated micro-batches, the gradients synchronised once per step): both ranks end with
    identical weights, the first step's loss is the same global batch's, and the weights differ
    from the single process's by under 2 % of the update (float summation order; a run that saw
    only one rank's shard differs by ~14 %)."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training", "train", "verdiff-mr",
               "--out", str(ddp), "--data", str(data_dir), "--steps", "3", "--lr", "1e-4", "--accumulate", str(accumulate), *TINY_ARGS]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((ddp / "summary.json").read_text(encoding="utf-8"))
    assert summary["world_size"] == 2 and len(summary["rank_weight_sha256"]) == 2
    assert summary["rank_weight_sha256"][0] == summary["rank_weight_sha256"][1]
    assert json.loads((ddp / "run.json").read_text(encoding="utf-8"))["settings"]["global_batch"] == 4 * accumulate
    assert "torchrun --nnodes 1 --nproc_per_node 2" in (ddp / "command.txt").read_text(encoding="utf-8")

    train(mr_run(), data_dir, single, tiny_options(steps=3, lr=1e-4, batch_size=4, accumulate=accumulate))
    assert float(log_rows(ddp)[0]["total"]) == pytest.approx(float(log_rows(single)[0]["total"]), rel=1e-5)
    torch.manual_seed(35)
    initial = VerdiffNet(channels=TINY).state_dict()
    a, b = load_weights(ddp / "model.pt"), load_weights(single / "model.pt")

    def distance(x, y):
        return math.sqrt(sum(float(((x[k].double() - y[k].double()) ** 2).sum()) for k in x if x[k].is_floating_point()))

    assert distance(a, b) < 0.02 * distance(b, initial)


def test_accumulated_micro_batches_give_the_mean_gradient_of_the_steps_they_would_have_been(tmp_path, data_dir):
    """--accumulate 2 draws each micro-batch as a step draws its batch, so its one step's gradient
    is the mean of the gradients of two plain steps from the same seed (the learning rate 0
    keeps the weights where they were; clipping off), and the global batch is batch x 2."""
    from training.distributed import World
    from training.train import Trainer

    def gradients(trainer):
        return {name: p.grad.detach().clone() for name, p in trainer.state.network.named_parameters() if p.grad is not None}

    options = dict(steps=4, lr=0.0, clip_grad=0.0, weight_decay=0.0)
    accumulated = Trainer(mr_run(), data_dir, tmp_path / "accumulated", tiny_options(accumulate=2, **options), World())
    terms, _ = accumulated.step(1)
    plain = Trainer(mr_run(), data_dir, tmp_path / "plain", tiny_options(**options), World())
    first_terms, _ = plain.step(1)
    first = gradients(plain)
    second_terms, _ = plain.step(2)
    mean = {name: (first[name] + gradient) / 2 for name, gradient in gradients(plain).items()}

    got = gradients(accumulated)
    assert got.keys() == mean.keys() and len(got) > 10
    for name in got:
        torch.testing.assert_close(got[name], mean[name], rtol=1e-4, atol=1e-7, msg=name)
    assert terms == pytest.approx([(a + b) / 2 for a, b in zip(first_terms, second_terms)], rel=1e-5)
    assert not torch.allclose(first[next(iter(first))], mean[next(iter(first))])  # two different micro-batches
    assert json.loads((tmp_path / "accumulated" / "run.json").read_text(encoding="utf-8"))["settings"]["global_batch"] == 4
    with pytest.raises(ValueError, match="--accumulate"):
        Trainer(mr_run(), data_dir, tmp_path / "none", tiny_options(accumulate=0), World())


# -- data adapters -------------------------------------------------------------------------
def _inside_quadrilateral(points: np.ndarray, shape) -> np.ndarray:
    """Pixel centres inside the convex quadrilateral TL, TR, BR, BL (cross-product signs):
    an independent rasterisation to check the adapter's polygon fill."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    corners = points[[0, 1, 3, 2]]  # TL, TR, BR, BL
    signs = []
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0)):
        signs.append((x1 - x0) * (rows - y0) - (y1 - y0) * (cols - x0))
    signs = np.stack(signs)
    return (signs >= 0).all(axis=0) | (signs <= 0).all(axis=0)


def test_aasce_mask_from_landmarks_fills_each_quadrilateral_with_its_level(data_dir):
    name, image_path, mat_path = datasets.aasce_cases(data_dir / "xray-aasce")[0]
    image = sitk.ReadImage(str(image_path))
    labels = sitk.GetArrayFromImage(datasets.aasce_mask(image, mat_path))
    points = datasets.read_landmarks(mat_path)
    assert set(np.unique(labels)) == set(range(18))
    union = np.zeros(labels.shape, bool)
    rows = []
    for level, quad in enumerate(points, start=1):
        inside = _inside_quadrilateral(quad, labels.shape)
        union |= inside
        assert np.mean(labels[inside] == level) > 0.9  # overlaps with neighbours aside
        rows.append(np.nonzero(labels == level)[0].mean())
    assert dice(labels > 0, union) > 0.97
    assert np.all(np.diff(rows) > 0)  # T1 at the top, L5 at the bottom


def test_aasce_landmarks_are_read_t1_to_l5_top_to_bottom_whatever_order_the_file_keeps(data_dir):
    """The held-out 258 A lists T1 last and 163 B has a vertebra's top and bottom corners swapped;
    read, every one of the 481 files runs T1..L5 down the rows with each vertebra's corners
    top-left, top-right, bottom-left, bottom-right; a file with one vertebra annotated twice
    (61 A: L4 twice, no L5) is flagged and left out of what the X-ray recipes train and validate on."""
    root = data_dir / "xray-aasce" / "labels" / "training"
    raw = scipy.io.loadmat(str(root / "sunhl-1th-12-Jan-2017-258 A AP.jpg.mat"))["p2"].astype(float).reshape(17, 4, 2)
    assert np.diff(raw.mean(axis=1)[:, 1]).min() < 0  # as stored: out of order
    read = datasets.read_landmarks(root / "sunhl-1th-12-Jan-2017-258 A AP.jpg.mat")
    np.testing.assert_array_equal(read[0], raw[-1])  # the T1 the file lists last
    np.testing.assert_array_equal(read[1:], raw[:-1])
    flagged = []
    for mat in sorted(root.glob("*.jpg.mat")):
        corners = datasets.read_landmarks(mat)
        assert np.all(np.diff(corners.mean(axis=1)[:, 1]) >= 0), mat.name
        assert np.all(corners[:, :2, 1].mean(axis=1) < corners[:, 2:, 1].mean(axis=1)), mat.name
        assert np.all(corners[:, [0, 2], 0].mean(axis=1) < corners[:, [1, 3], 0].mean(axis=1)), mat.name
        if datasets.landmark_problem(mat):
            flagged.append(mat.name.removesuffix(".jpg.mat"))
    assert "sunhl-1th-25-Jul-2016-61 A AP" in flagged and "sunhl-1th-12-Jan-2017-258 A AP" not in flagged
    assert len(flagged) == 7, flagged
    assert "vertebrae 16 and 17" in datasets.landmark_problem(root / "sunhl-1th-25-Jul-2016-61 A AP.jpg.mat")
    usable = {name for name, _, _ in datasets.aasce_cases(data_dir / "xray-aasce", usable_only=True)}
    assert len(usable) == 481 - 7 and not usable & set(flagged)
    labels = sitk.GetArrayFromImage(datasets.aasce_mask(sitk.ReadImage(str(data_dir / "xray-aasce" / "data" / "training" / "sunhl-1th-12-Jan-2017-258 A AP.jpg")),
                                                        root / "sunhl-1th-12-Jan-2017-258 A AP.jpg.mat"))
    rows = [np.nonzero(labels == level)[0].mean() for level in range(1, 18)]
    assert rows == sorted(rows)  # label 1 (T1) at the top


def test_aasce_items_are_grouped_by_patient_and_split_without_leaks(data_dir):
    items = datasets.aasce_items(data_dir / "xray-aasce")
    by_name = {item.name: item.subject for item in items}
    assert by_name["sunhl-1th-02-Jan-2017-162 A AP"] == by_name["sunhl-1th-02-Jan-2017-162 B AP"] == "patient-162"
    assert by_name["sunhl-1th-03-Jan-2017-165 A AP"] == by_name["sunhl-1th-04-Jan-2017-165 C AP"]
    split = split_subjects([item.subject for item in items], seed=35, validation=0.1, test=0.1)
    assert split == split_subjects([item.subject for item in items], seed=35, validation=0.1, test=0.1)
    assert split["validation"] != split_subjects([item.subject for item in items], seed=36, validation=0.1, test=0.1)["validation"]
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not set(split[a]) & set(split[b])
    assert len(split["validation"]) == len(split["test"]) == len({i.subject for i in items}) // 10


def test_aasce_per_level_labels_on_the_network_grid(data_dir):
    item = datasets.aasce_items(data_dir / "xray-aasce")[0]
    recipe = RECIPES["verdiff-xray"]
    levels = LabelScheme("levels", tuple(source_levels("aasce")))
    case = datasets.load_case(item, levels, recipe["spacing_mm"], recipe["normalisation"])
    binary = datasets.load_case(item, LabelScheme(), recipe["spacing_mm"], recipe["normalisation"])
    assert case.images.shape[0] == 1 and 0 <= case.images.min() and case.images.max() <= 1
    assert set(np.unique(case.labels)) == set(range(18)) and levels.num_classes == 17
    assert np.array_equal(case.labels > 0, binary.labels == 1)


def test_mr_labels_1_to_5_are_lumbar_bodies_on_the_inference_grid(data_dir):
    recipe = RECIPES["verdiff-mr"]
    item = datasets.mr_item(data_dir, "VB3_01")
    levels = LabelScheme("levels", ("L1", "L2", "L3", "L4", "L5"))
    case = datasets.load_case(item, levels, recipe["spacing_mm"], recipe["normalisation"])
    assert set(np.unique(case.labels)) == set(range(6))
    rows = [np.nonzero(case.labels == k)[1].mean() for k in range(1, 6)]
    assert np.all(np.diff(rows) > 0)  # rows run superior to inferior: L1 above L5
    # Back on the input grid, as the pipeline maps its results, the labels are the source's.
    image, truth = datasets.truth_on_image_grid(item, levels)
    back = from_sagittal_stack(case.labels, sagittal_reference(image, recipe["spacing_mm"]), image, is_label=True)
    assert dice(sitk.GetArrayFromImage(back) > 0, truth > 0) > 0.9
    assert np.array_equal(truth, sitk.GetArrayFromImage(sitk.ReadImage(str(item.labels))))


def test_ct_chest_totalsegmentator_ids_29_to_46_are_the_vertebrae_c5_to_l3(data_dir):
    recipe = RECIPES["verdiff-ct"]
    item = datasets.ct_chest_item(data_dir)
    levels = LabelScheme("levels")  # C1..L6 and T13: C5 = 5, L3 = 23
    image, source = datasets.read_item(item)
    reference = sagittal_reference(image, recipe["spacing_mm"])
    from VerdiffSegmentLib.inferers.sagittal import to_sagittal_stack

    ids = to_sagittal_stack(source, reference, recipe["spacing_mm"], is_label=True)
    case = datasets.slice_case(item.name, image, source, item.source, levels, recipe["spacing_mm"], recipe["normalisation"])
    assert np.array_equal(case.labels > 0, np.isin(ids, range(29, 47)))  # organs and ribs are background
    present = [levels.levels[v - 1] for v in np.unique(case.labels) if v]
    assert present == ["C5", "C6", "C7"] + [f"T{i}" for i in range(1, 13)] + ["L1", "L2", "L3"]
    assert np.nonzero(case.labels == levels.value_of("C5"))[1].mean() < np.nonzero(case.labels == levels.value_of("L3"))[1].mean()


def test_ct_abdomen_binary_labels_leave_out_s1_as_the_recipe_does(data_dir):
    item = datasets.ct_abdomen_item(data_dir)
    image, truth = datasets.truth_on_image_grid(item, LabelScheme())
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(item.labels)))
    assert np.array_equal(truth > 0, np.isin(source, range(27, 34)))
    assert (source == 26).any() and not truth[source == 26].any()
    assert recipe_config("verdiff-ct").labels.levels[-1] == "L5"


def test_the_xray_split_is_drawn_by_the_config_split_seed_and_a_warm_start_knows_its_held_out_images(data_dir):
    """The X-ray recipe's held-out radiographs come from the run config's split seed (35), not
    the training seed: until session 26 ``--seed 26`` drew another 48, and a warm start from the
    bundled model trained on 45 of the radiographs that model is validated on. ``held_out_of``
    reads what the weights given to ``--init`` were validated on (the Trainer warns when a run
    trains on any of them)."""
    from training.train import held_out_of

    run = recipe_config("verdiff-xray")
    _, split = datasets.training_cases(run, data_dir, limit=0)
    other = RunConfig.from_dict({**run.to_dict(), "split": {**run.split, "seed": 36}})
    _, other_split = datasets.training_cases(other, data_dir, limit=0)
    assert other_split["validation"] != split["validation"]
    assert held_out_of(str(MODELS / "verdiff-xray.pt")) == set(split["validation"])
    assert held_out_of(str(MODELS / "verdiff-mr.pt")) == set(MR_VALIDATION)
    assert held_out_of(None) == set() and held_out_of(str(data_dir / "nothing.pt")) == set()


def test_recipe_splits_are_unchanged(data_dir):
    """The bundled recipes hold out what their cards say."""
    _, mr = datasets.training_cases(recipe_config("verdiff-mr"), data_dir, limit=2)
    assert mr == {"train": ["VB3_01", "VB3_02"], "validation": ["VB3_17", "VB3_18", "VB3_20", "VB3_35", "VB3_42", "VB3_48", "VB3_49", "VB3_51"]}
    assert MR_VALIDATION == mr["validation"]
    _, xray = datasets.training_cases(recipe_config("verdiff-xray"), data_dir, limit=0)
    card = json.loads((MODELS / "verdiff-xray.json").read_text(encoding="utf-8")) if (MODELS / "verdiff-xray.json").exists() else None
    if card is not None:
        assert xray["validation"] == card["training"]["split"]["validation"]
    assert len(xray["validation"]) == 48


def test_a_toml_config_describes_data_sets_labels_and_split(tmp_path, data_dir):
    config = tmp_path / "run.toml"
    config.write_text(
        """
name = "mr-levels"
recipe = "verdiff-mr"
channels = [8, 16, 32]
labels = { scheme = "levels" }
[split]
seed = 35
validation_subjects = ["VB3_03"]
[[datasets]]
images = "mr-lumbar-vb3/*_img.nii.gz"
labels = "mr-lumbar-vb3/*_seg.nii.gz"
source = "lumbar-1-5"
include = ["VB3_01", "VB3_02", "VB3_03"]
"""
    )
    run = load_config(config)
    assert run.labels.levels == ("L1", "L2", "L3", "L4", "L5") and run.labels.num_classes == 5
    assert [label["name"] for label in run.card_labels] == [f"L{i} vertebral body" for i in range(1, 6)]
    out = tmp_path / "run"
    train(run, data_dir, out, tiny_options(steps=2, limit=None))
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert split["train"] == ["VB3_01", "VB3_02"] and split["validation"] == ["VB3_03"]
    assert load_weights(out / "model.pt")["denoiser.head.2.weight"].shape[0] == 5  # one channel per level
    config.write_text(config.read_text(encoding="utf-8").replace('source = "lumbar-1-5"', 'source = "lumbar-1-5"\nspacing = 2'))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(config)
    with pytest.raises(ValueError, match="unknown label source"):
        RunConfig.from_dict({"recipe": "verdiff-mr", "datasets": [{"images": "a/*.nii", "labels": "b/*.nii", "source": "verse2"}]})


def test_the_bundled_all_ct_config_trains_on_both_labelled_cts_s1_included(data_dir):
    """``training/verdiff-ct-all.toml`` (files named without a '*': one labelled volume each):
    both CTs, no held-out subject, S1 a foreground level; a pattern with a '*' on one side only
    is refused."""
    from training.datasets import training_cases

    run = load_config(REPO / "training" / "verdiff-ct-all.toml")
    assert run.recipe == "verdiff-ct" and run.labels.levels[-1] == "S1"
    cases, split = training_cases(run, data_dir)
    assert split["train"] == ["cxr_ct_int16", "example_ct"] and split["validation"] == []
    assert all(case.labels.any() for case in cases)
    # S1 is foreground: labelled in the abdominal CT only (the chest CT ends at L3)
    only_s1, _ = training_cases(RunConfig.from_dict({**run.to_dict(), "labels": {"scheme": "binary", "levels": ["S1"]}}), data_dir)
    by_name = {case.name: case for case in only_s1}
    assert by_name["example_ct"].labels.any() and not by_name["cxr_ct_int16"].labels.any()
    # nothing held out: validation reads the training cases, each reported as trained on
    # (``evaluate`` then flags its means ``trained_on_only``)
    from training.datasets import evaluation_cases

    reported = [next(iter(selectors)) for _, _, _, selectors, _ in evaluation_cases(run, data_dir, split)]
    assert reported == ["cxr_ct_int16 (trained on)", "example_ct (trained on)"]
    with pytest.raises(ValueError, match="one '\\*'"):
        RunConfig.from_dict({"recipe": "verdiff-ct", "datasets": [{"images": "a/*.nii", "labels": "b/mask.nii", "source": "totalsegmentator"}]})


# -- the package's shape -----------------------------------------------------------------
def training_imports() -> dict[str, set[str]]:
    """module -> the training modules it imports anywhere in its code (lazy imports too)."""
    graph = {}
    for path in sorted((REPO / "training").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                name = (base + (f".{node.module}" if node.module else "")) if node.level else node.module
                targets |= {name, *(f"{name}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[module] = targets
    return {module: {t for t in targets if t in graph and t != module} for module, targets in graph.items()}


def test_no_training_modules_import_each_other_in_a_cycle():
    """Issue 12: evaluate and export once imported each other; a cycle (lazy imports counted)
    makes the import order matter and the pieces hard to read apart."""
    graph = training_imports()
    assert "training.evaluate" in graph["training.export"] and "training.evaluate" in graph["training.train"]
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, cycles


# -- 2.5D: neighbouring slices as input channels, warm-started from a 1-channel model (issue 16, item 4)
def context_card(card, context_slices: int):
    """``card`` as a 2.5D card of ``context_slices`` neighbours on each side (weights not checked)."""
    return card.derived(network={**card.network_config, "in_channels": 1 + 2 * context_slices}, input={**card.raw["input"], "context_slices": context_slices})


def test_a_2_5d_run_warm_started_from_the_bundled_mr_model_segments_as_it_does_at_step_0(tmp_path, data_dir):
    """``train verdiff-mr --init Resources/Models/verdiff-mr-2d.pt --context-slices 1``: the
    widened network's probability on a held-out MR volume is the bundled 1-channel model's, with the
    same seed and noise, to float32 rounding (a convolution over 3 channels sums in another
    order than over 1: measured 3e-6), and the label maps are the same."""
    from training.__main__ import main
    from VerdiffSegmentLib.models import get_card, load_network
    from VerdiffSegmentLib.pipeline import segment

    main(["train", "verdiff-mr", "--init", str(MODELS / "verdiff-mr-2d.pt"), "--context-slices", "1", "--train-steps", "0", "--limit", "1",
          "--threads", "1", "--no-tensorboard", "--out", str(tmp_path), "--data", str(data_dir)])
    bundled = get_card("verdiff-mr-2d")  # the bundled 1-channel MR model (the 2.5D default started from it)
    card = context_card(bundled, 1)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["context_slices"] == 1 and run["config"]["channels"] == [16, 32, 64, 128]  # the card's architecture
    widened, original = load_weights(tmp_path / "model.pt"), load_weights(bundled.weights_path)
    image_convs = [k for k in original if widened[k].shape != original[k].shape]
    assert len(image_convs) == 3 and all(widened[k].shape[1] == 3 for k in image_convs)  # the MSFM's 3x3, 5x5 and 7x7 branches
    for key in image_convs:
        assert torch.equal(widened[key][:, 1:2], original[key]) and not widened[key][:, [0, 2]].any()
    network = card.family.network(**card.network_config)
    network.load_state_dict(widened)
    network = network.to(memory_format=torch.channels_last).eval()

    volume = sitk.ReadImage(str(data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))  # held out
    slab = volume[:, :, 32:44]  # 12 central sagittal slices (the third axis is left-right)
    ours = segment(slab, card, device="cpu", seed=5, network=network, keep_probability=True)
    theirs = segment(slab, bundled, device="cpu", seed=5, network=load_network(bundled, "cpu"), keep_probability=True)
    assert ours.settings["diffused_slices"] == theirs.settings["diffused_slices"] > 0
    for a, b in ((ours.probability, theirs.probability), (ours.uncertainty, theirs.uncertainty)):
        assert np.abs(sitk.GetArrayViewFromImage(a) - sitk.GetArrayViewFromImage(b)).max() < 1e-5
    assert np.array_equal(sitk.GetArrayViewFromImage(ours.labels), sitk.GetArrayViewFromImage(theirs.labels))
    assert sitk.GetArrayViewFromImage(ours.labels).any()


def test_a_2_5d_run_refuses_x_rays_3d_and_fewer_context_slices_than_its_init():
    with pytest.raises(ValueError, match="X-rays are single images"):
        recipe_config("verdiff-xray", context_slices=1)
    with pytest.raises(ValueError, match="context_slices is for 2D runs"):
        recipe_config("verdiff-mr", family="imgx-diffseg", context_slices=1, spatial_dims=3, patch_size=(16, 32, 32))
    from training.__main__ import keep_init_architecture
    import argparse

    args = argparse.Namespace(init=str(MODELS / "verdiff-mr-2d.pt"), channels=None, family=None, context_slices=None)
    keep_init_architecture(args)
    assert (args.context_slices, args.channels) == (0, (16, 32, 64, 128))
    args = argparse.Namespace(init=str(MODELS / "verdiff-mr.pt"), channels=None, family=None, context_slices=None)
    keep_init_architecture(args)
    assert (args.context_slices, args.channels) == (1, (16, 32, 64, 128))  # the 2.5D default keeps its neighbours
    assert recipe_config("verdiff-mr", context_slices=2).network_arguments["in_channels"] == 5


def test_the_context_distance_comes_from_the_arguments_or_the_init_card_and_reaches_the_card(tmp_path):
    """``train --context-distance MM`` sets the run's ``context_distance_mm``; a warm start
    without it keeps its card's (absent on the bundled card: None, the grid spacing); the card
    the run validates and exports with carries it; a 1-channel run refuses it."""
    import argparse
    import json

    from training.__main__ import _train_parser, run_config_from_args
    from training.evaluate import card_data
    from VerdiffSegmentLib.models import parse_card

    parser = argparse.ArgumentParser()
    _train_parser(parser.add_subparsers(dest="command"))

    def run_of(*extra):
        return run_config_from_args(parser.parse_args(["train", "verdiff-mr", "--out", str(tmp_path), "--init", str(MODELS / "verdiff-mr.pt"), *extra]))

    assert run_of().context_distance_mm is None and run_of().context_mm == 1.25
    run = run_of("--context-distance", "4")
    assert run.context_distance_mm == 4.0 and run.context_slices == 1
    card = card_data(run, "w.pt", "0" * 64, 1, 2)
    assert card["input"]["context_distance_mm"] == 4.0 and "context_distance_mm" not in card_data(run_of(), "w.pt", "0" * 64, 1, 2)["input"]
    assert parse_card(json.loads(json.dumps(card)), tmp_path / "x.json").context_distance_mm == 4.0
    with pytest.raises(ValueError, match="context_distance_mm is for 2.5D runs"):
        recipe_config("verdiff-mr", context_distance_mm=4.0)


def test_a_2_5d_sampler_stacks_the_neighbours_and_transforms_all_channels_alike(data_dir):
    """The sampler's channels are the slice and its neighbours at +-1.25 mm (1 mm slices:
    interpolated), the label is the centre slice's, and one warp moves every channel alike."""
    run = recipe_config("verdiff-mr", channels=TINY, context_slices=1)
    case = datasets.run_case(datasets.mr_item(data_dir, "VB3_01"), run)
    assert case.slice_spacing_mm == 1.0
    rotate = PRESETS["light"].__class__(rotation_deg=20.0, rotation_p=1.0)
    sampler = SliceSampler([case], 96, 3, rotate, context_slices=1, context_distance_mm=run.input_spacing_mm)
    images, masks = sampler.batch(6)
    assert images.shape == (6, 3, 96, 96) and masks.shape == (6, 1, 96, 96)
    assert np.allclose(sampler.offsets[0], [-1.25, 0.0, 1.25])
    # neighbours differ from the centre, but only a little (1.25 mm apart), and every channel is warped alike:
    # a channel's edges lie where the centre's do
    for image in images.numpy():
        centre, left, right = image[1], image[0], image[2]
        assert 0 < np.abs(left - centre).mean() < 0.1 and 0 < np.abs(right - centre).mean() < 0.1
        edges = [np.hypot(*np.gradient(channel)) for channel in image]
        assert all(np.corrcoef(edges[1].ravel(), other.ravel())[0, 1] > 0.6 for other in (edges[0], edges[2]))


def test_a_2_5d_model_widens_to_more_neighbours_and_keeps_its_own_unless_told(tmp_path, data_dir):
    """From 1 neighbour on each side to 2: the old channels keep their distances (the centre
    3 of 5), so the output is unchanged; ``--init`` from a 2.5D card keeps its context slices,
    makes a planar model with 0 (next test), and refuses other fewer."""
    import argparse

    from training.__main__ import keep_init_architecture
    from training.checkpoint import fit_image_input
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.models import get_card
    from VerdiffSegmentLib.preparation import prepare_image

    torch.manual_seed(3)
    three, five = VerdiffNet(in_channels=3, channels=TINY).eval(), VerdiffNet(in_channels=5, channels=TINY)
    five.load_state_dict(fit_image_input(three.state_dict(), five.state_dict(), 2))
    five.eval()
    prepared = prepare_image(read_image(str(data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz")), 1.25, {"kind": "percentile", "low": 0.5, "high": 99.5}, context_slices=2)
    images = torch.from_numpy(np.ascontiguousarray(prepared.network_input([36, 40])[:, :, 40:104, 60:124]))
    with torch.no_grad():
        assert torch.allclose(three.condition(images[:, 1:4]).prior, five.condition(images).prior, atol=1e-5)

    card = get_card("verdiff-mr")
    data = {**card.raw, "network": {**card.network_config, "in_channels": 3}, "input": {**card.raw["input"], "context_slices": 1}}
    (tmp_path / "mr25d.json").write_text(json.dumps(data), encoding="utf-8")
    args = argparse.Namespace(init=str(tmp_path / "mr25d.pt"), channels=None, family=None, context_slices=None)
    keep_init_architecture(args)
    assert args.context_slices == 1
    wider = {**data, "network": {**card.network_config, "in_channels": 5}, "input": {**card.raw["input"], "context_slices": 2}}
    (tmp_path / "mr5.json").write_text(json.dumps(wider), encoding="utf-8")
    with pytest.raises(ValueError, match="would drop its weights"):  # from 2 neighbours to 1: which would merge is a guess
        keep_init_architecture(argparse.Namespace(init=str(tmp_path / "mr5.pt"), channels=None, family=None, context_slices=1, model=None))
    planar_args = argparse.Namespace(init=str(tmp_path / "mr25d.pt"), channels=None, family=None, context_slices=0, model=None)
    keep_init_architecture(planar_args)  # a planar model of a 2.5D one
    assert planar_args.context_slices == 0


def test_a_planar_model_from_a_2_5d_one_computes_what_it_did_on_a_repeated_slice(data_dir):
    """``fit_image_input`` to one channel: the summed image kernels give, on a single slice, the
    2.5D network's output on that slice repeated into its neighbour channels (what it sees at a
    stack's replicated edge), and differs from what it computes with empty neighbours."""
    from training.checkpoint import fit_image_input
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.preparation import prepare_image

    torch.manual_seed(4)
    three, one = VerdiffNet(in_channels=3, channels=TINY).eval(), VerdiffNet(in_channels=1, channels=TINY)
    one.load_state_dict(fit_image_input(three.state_dict(), one.state_dict(), 0))
    one.eval()
    prepared = prepare_image(read_image(str(data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz")), 1.25, {"kind": "percentile", "low": 0.5, "high": 99.5})
    single = torch.from_numpy(np.ascontiguousarray(prepared.network_input([36, 40])[:, :, 40:104, 60:124]))
    assert single.shape[1] == 1
    with torch.no_grad():
        planar, repeated = one.condition(single).prior, three.condition(single.repeat(1, 3, 1, 1)).prior
        assert torch.allclose(planar, repeated, atol=1e-5)
        assert not torch.allclose(planar, three.condition(torch.cat([single, torch.zeros_like(single), torch.zeros_like(single)], 1)).prior, atol=1e-3)


def test_a_warm_start_continues_on_its_cards_grid_unless_told(tmp_path):
    """``--init`` from a card trained on a 4 px grid continues on 4 px, not on the recipe's 5;
    ``--spacing`` still wins, and a card on the recipe's grid leaves the recipe's default."""
    import argparse

    from training.__main__ import keep_init_architecture
    from VerdiffSegmentLib.models import get_card

    card = get_card("verdiff-xray")
    (tmp_path / "xray4.json").write_text(json.dumps({**card.raw, "input": {**card.raw["input"], "spacing_mm": 4.0}}), encoding="utf-8")
    namespace = dict(init=str(tmp_path / "xray4.pt"), channels=None, family=None, context_slices=None, model="verdiff-xray", config=None)
    args = argparse.Namespace(**namespace, spacing=None)
    keep_init_architecture(args)
    assert args.spacing == 4.0
    args = argparse.Namespace(**namespace, spacing=3.0)
    keep_init_architecture(args)
    assert args.spacing == 3.0
    args = argparse.Namespace(**{**namespace, "init": str(MODELS / "verdiff-mr-2d.pt"), "model": "verdiff-mr"}, spacing=None)
    keep_init_architecture(args)
    assert args.spacing is None  # verdiff-mr-2d is on the recipe's 1.25 mm grid


# -- the binary-gaps scheme (issue 15) -----------------------------------------------------
def test_neighbour_gaps_lie_between_neighbouring_levels_and_nowhere_beside_them():
    """Two bodies a 2-pixel disc apart and a third touching the second: the gap fills the
    disc and crosses the contact, stays inside the bodies' width, and skips non-neighbours."""
    from training.labels import neighbour_gaps

    levels = np.zeros((40, 30), np.uint8)
    levels[5:13, 10:20] = 1
    levels[15:23, 10:20] = 2  # disc rows 13-14
    levels[23:31, 10:20] = 3  # touches 2
    levels[33:38, 10:20] = 5  # no level 4: no gap to 3
    gaps = neighbour_gaps(levels, (1.0, 1.0))
    assert gaps[13:15, 10:20].all()  # the disc
    assert gaps[22, 10:20].all() and gaps[23, 10:20].all()  # across the contact
    assert not gaps[:, :8].any() and not gaps[:, 22:].any()  # nothing beside the spine
    assert not gaps[31:, :].any() and not gaps[:11, :].any()  # none to the unrelated level, none above the first
    assert not gaps[17:21].any()  # the middle of a body is no gap


def test_binary_gaps_labels_keep_the_binary_label_and_cut_every_aasce_neighbour_pair(data_dir):
    """Real landmarks: bit 0 is the binary scheme's label, and without the gap pixels (bit 1)
    the 17 vertebrae fall apart into at least 17 pieces, each truth level mostly in one."""
    from training.labels import bit_masks

    item = datasets.aasce_items(data_dir / "xray-aasce")[0]
    recipe = RECIPES["verdiff-xray"]
    gaps = LabelScheme("binary-gaps", tuple(source_levels("aasce")))
    assert (gaps.num_classes, gaps.network_channels) == (1, 2)
    case = datasets.load_case(item, gaps, recipe["spacing_mm"], recipe["normalisation"])
    binary = datasets.load_case(item, LabelScheme(), recipe["spacing_mm"], recipe["normalisation"])
    per_level = datasets.load_case(item, LabelScheme("levels", gaps.levels), recipe["spacing_mm"], recipe["normalisation"])
    masks = bit_masks(case.labels[0], 2)
    assert np.array_equal(masks[0] > 0, binary.labels[0] == 1)
    core = (masks[0] > 0) & (masks[1] == 0)
    pieces, count = ndi.label(core)
    assert count >= 17
    for level in range(1, 18):
        owners = np.bincount(pieces[(per_level.labels[0] == level) & core], minlength=count + 1)[1:]
        assert owners.max() > 0.9 * owners.sum(), level


def warm_started_run(tmp_path, data_dir, bundled_name: str, scheme_arguments: list[str], num_classes: int):
    """``train verdiff-xray <scheme_arguments> --init <bundled>.pt`` for 0 steps: the bundled
    network, the run's network of ``num_classes`` outputs and the first training X-ray's
    128 px corner as a network input; the run's labels config."""
    from training.__main__ import main
    from VerdiffSegmentLib.models import get_card, load_network

    main(["train", "verdiff-xray", *scheme_arguments, "--init", str(MODELS / f"{bundled_name}.pt"), "--train-steps", "0", "--limit", "1",
          "--threads", "1", "--no-tensorboard", "--out", str(tmp_path), "--data", str(data_dir)])
    bundled = get_card(bundled_name)
    started = bundled.family.network(**{**bundled.network_config, "num_classes": num_classes})
    started.load_state_dict(load_weights(tmp_path / "model.pt"))
    started.eval()
    cases, _ = datasets.training_cases(recipe_config("verdiff-xray"), data_dir, limit=1)
    image = torch.from_numpy(cases[0].images[:1, None, 64:192, :128].copy())
    labels = json.loads((tmp_path / "run.json").read_text())["config"]["labels"]
    return load_network(bundled, "cpu").float(), started, image, labels


def test_a_binary_gaps_run_warm_started_from_a_bundled_binary_model_keeps_its_binary_channel(tmp_path, data_dir):
    """``train verdiff-xray --label-scheme binary-gaps --init verdiff-mr-2d.pt`` (a bundled
    binary Verdiff-Net of the X-ray model's widths; the bundled X-ray model has its gap channel
    already): at step 0 the prior and the denoiser give the binary model's output on a real
    X-ray whatever the gap channel holds; the gap channel starts as a copy of the binary one."""
    original, widened, image, labels = warm_started_run(tmp_path, data_dir, "verdiff-mr-2d", ["--label-scheme", "binary-gaps"], 2)
    assert original.num_classes == 1 and labels["scheme"] == "binary-gaps"
    with torch.no_grad():
        old, new = original.condition(image), widened.condition(image)
        # to float32 rounding: the heads' convolutions run with another output width (measured 4e-5)
        assert torch.allclose(new.prior[:, :1], old.prior, atol=2e-4) and torch.allclose(new.prior[:, 1:], old.prior, atol=2e-4)
        x_t, t = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)), torch.tensor([150])
        gap_noise = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))
        expected = original(x_t, t, old)
        for gap_channel in (gap_noise, -gap_noise):
            got = widened(torch.cat([x_t, gap_channel], 1), t, new)[:, :1]
            assert torch.allclose(got, expected, atol=2e-4)  # measured 3e-5 on outputs up to 4.9


# -- the levels scheme from a binary model (issue 15) -----------------------------------------
@pytest.mark.parametrize("bundled_name", ["verdiff-mr-2d", "verdiff-xray"])  # binary; binary with a gap channel
def test_a_levels_run_warm_started_from_a_bundled_binary_model_starts_each_level_as_the_vertebra(tmp_path, data_dir, bundled_name):
    """``train verdiff-xray --label-scheme levels --levels T1,T2,T3 --init <bundled binary>``:
    at step 0 every level's prior is the binary model's prior, and where every level channel
    of x_t holds the binary x_t, every level's output is the binary model's (its vertebra
    channel's, its gap channel silenced: the levels read nothing from the gaps). A wrong split
    of ``mask_in`` (not divided by the level count, or a gap column kept) moves the outputs by
    far more than the tolerance."""
    original, levels, image, labels = warm_started_run(tmp_path, data_dir, bundled_name, ["--label-scheme", "levels", "--levels", "T1,T2,T3"], 3)
    assert labels == {"scheme": "levels", "levels": ["T1", "T2", "T3"]}
    with torch.no_grad():
        old, new = original.condition(image), levels.condition(image)
        for level in range(3):
            assert torch.allclose(new.prior[:, level : level + 1], old.prior[:, :1], atol=2e-4)
        x_t, t = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)), torch.tensor([150])
        # the binary model with its gap channel silenced (x_t and prior 0): what the levels start from
        without_gaps = dataclasses.replace(old, prior=torch.cat([old.prior[:, :1], torch.zeros_like(old.prior[:, 1:])], 1))
        expected = original(torch.cat([x_t, torch.zeros(1, original.num_classes - 1, 128, 128)], 1), t, without_gaps)[:, :1]
        got = levels(x_t.repeat(1, 3, 1, 1), t, new)
        assert got.shape[1] == 3
        for level in range(3):
            assert torch.allclose(got[:, level : level + 1], expected, atol=5e-4), float((got[:, level : level + 1] - expected).abs().max())


def test_the_band_under_the_lowest_vertebra_lies_under_l5_and_outside_every_vertebra(data_dir):
    """Real landmarks (binary-gaps labels of four training radiographs on the 4 px grid): the
    band (``--sacral-band-weight``) is under L5 (in L5's columns, below its top there, centred low),
    touches no vertebra, and is about L5's size, not a sliver or the whole lower image."""
    from training.sampler import band_under_lowest_vertebra

    recipe = RECIPES["verdiff-xray"]
    gaps = LabelScheme("binary-gaps", tuple(source_levels("aasce")))
    for item in datasets.aasce_items(data_dir / "xray-aasce")[:4]:
        labels = datasets.load_case(item, gaps, 4.0, recipe["normalisation"]).labels[0]
        levels = datasets.load_case(item, LabelScheme("levels", gaps.levels), 4.0, recipe["normalisation"]).labels[0]
        band = band_under_lowest_vertebra(labels)
        l5_rows = np.nonzero(levels == 17)[0]
        rows, cols = np.nonzero(band)
        assert not (band & (levels > 0)).any(), item.name
        top_of_l5 = np.where((levels == 17).any(axis=0), (levels == 17).argmax(axis=0), levels.shape[0])  # per column
        assert (rows > top_of_l5[cols]).all() and rows.mean() > l5_rows.mean() + 0.5 * np.ptp(l5_rows), item.name  # under L5 in its columns
        assert 0.5 * len(l5_rows) < band.sum() < 4 * len(l5_rows), item.name
        # started 0.3 of L5's height lower: the rows right under L5 (its disc) leave the band, none is added above
        lower = band_under_lowest_vertebra(labels, 0.3)
        bottom_of_l5 = np.where((levels == 17).any(axis=0), levels.shape[0] - 1 - (levels == 17)[::-1].argmax(axis=0), -1)
        skip = round(0.3 * np.ptp(l5_rows))
        rows, cols = np.nonzero(lower)
        assert (rows > bottom_of_l5[cols] + skip - 2).all() and lower.sum() > 0.5 * len(l5_rows), item.name
        assert (band & (rows_under(band, bottom_of_l5) <= skip - 2)).any() and not (lower & (rows_under(lower, bottom_of_l5) <= skip - 2)).any(), item.name
    assert not band_under_lowest_vertebra(np.zeros((20, 20), np.uint8)).any()


def rows_under(band: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Per pixel of a [rows, cols] map: its rows under ``bottom`` (a row per column)."""
    return np.arange(band.shape[0])[:, None] - bottom[None, :]


def test_a_sampler_with_the_band_adds_its_channel_and_keeps_the_plain_samples(data_dir):
    """``SliceSampler(band_under_lowest=True)`` on a real radiograph: the same seeds give the
    plain sampler's images and masks, and one channel more, the band, nonzero in some crops and
    never on a vertebra; without binary-gaps labels it is refused."""
    from training.sampler import SliceSampler

    run = recipe_config("verdiff-xray", "binary-gaps", channels=TINY)
    case = datasets.run_case(datasets.aasce_items(data_dir / "xray-aasce")[0], run)
    plain = SliceSampler([case], 96, 5, PRESETS["paper"], 2, bits=True)
    banded = SliceSampler([case], 96, 5, PRESETS["paper"], 2, bits=True, band_under_lowest=True)
    shown = 0
    for seed in range(40):
        (a, ma), (b, mb) = plain.sample(seed), banded.sample(seed)
        assert np.array_equal(a, b) and np.array_equal(ma, mb[:2]) and mb.shape[0] == 3
        assert not (mb[2] * mb[0]).any()
        shown += bool(mb[2].any())
    assert 3 <= shown <= 37
    with pytest.raises(ValueError, match="binary-gaps"):
        SliceSampler([case], 96, 5, PRESETS["paper"], 1, band_under_lowest=True)


def test_a_pixel_weight_of_one_is_the_plain_loss_and_a_weighted_band_raises_only_the_bce_terms():
    from VerdiffSegmentLib.losses import verdiff_loss

    torch.manual_seed(0)
    eps, noise, x0, logits = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16), torch.rand(2, 2, 16, 16) * 2 - 1, torch.randn(2, 2, 16, 16)
    mask = (torch.rand(2, 2, 16, 16) > 0.5).float()
    plain = verdiff_loss(eps, noise, x0, mask, logits)
    ones = verdiff_loss(eps, noise, x0, mask, logits, torch.ones(2, 1, 16, 16))
    band = torch.zeros(2, 1, 16, 16)
    band[:, :, 8:] = 1
    weighted = verdiff_loss(eps, noise, x0, mask, logits, 1 + 5 * band)
    for term in plain:
        assert torch.allclose(plain[term], ones[term]), term
    assert weighted["simple"] == plain["simple"]
    assert weighted["bce"] > 2 * plain["bce"] and weighted["prior"] > plain["prior"]


def test_a_sacral_band_run_trains_and_is_refused_without_binary_gaps_labels(tmp_path, data_dir):
    """``train verdiff-xray --label-scheme binary-gaps --sacral-band-weight 5``: real training
    steps with finite losses; the option on a binary run, or negative, is one clear error."""
    from training.__main__ import main

    common = ["verdiff-xray", "--train-steps", "2", "--data", str(data_dir), *TINY_ARGS]
    main(["train", *common, "--label-scheme", "binary-gaps", "--sacral-band-weight", "5", "--out", str(tmp_path / "band")])
    rows = log_rows(tmp_path / "band")
    assert len(rows) == 2 and all(math.isfinite(float(row["bce"])) for row in rows)
    assert json.loads((tmp_path / "band" / "run.json").read_text())["settings"]["sacral_band_weight"] == 5
    for arguments in (["--sacral-band-weight", "5"], ["--label-scheme", "binary-gaps", "--sacral-band-weight", "-1"]):
        with pytest.raises(ValueError, match="sacral-band-weight"):
            main(["train", *common, *arguments, "--out", str(tmp_path / "refused")])
    for arguments in (["--sacral-band-offset", "0.3"], ["--sacral-band-weight", "5", "--sacral-band-offset", "1.5"]):
        with pytest.raises(ValueError, match="sacral-band-offset"):
            main(["train", *common, "--label-scheme", "binary-gaps", *arguments, "--out", str(tmp_path / "refused")])
    assert "sacral_band_weight" in RESUME_KEYS and "sacral_band_offset" in RESUME_KEYS


def test_crops_drawn_along_the_spine_show_the_top_vertebrae_more_often_and_l5_as_often(data_dir):
    """Real landmarks (binary-gaps labels of three training radiographs on the 4 px grid):
    224-row crops centred ``along-spine`` contain T1 and T2 more often than crops centred on a
    random spine pixel, L5 at least as often, and the middle of the spine still in most."""
    from training.sampler import centred_window, pad_up_to

    recipe = RECIPES["verdiff-xray"]
    gaps = LabelScheme("binary-gaps", tuple(source_levels("aasce")))
    seen = {"pixel": np.zeros(18), "along-spine": np.zeros(18)}
    for item in datasets.aasce_items(data_dir / "xray-aasce")[:3]:
        labels = pad_up_to(datasets.load_case(item, gaps, 4.0, recipe["normalisation"]).labels[0], (224, 224))
        levels = pad_up_to(datasets.load_case(item, LabelScheme("levels", gaps.levels), 4.0, recipe["normalisation"]).labels[0], (224, 224))
        for centre, counts in seen.items():
            rng = np.random.default_rng(7)
            for _ in range(400):
                counts[np.unique(levels[centred_window(labels, (224, 224), rng, centre, bits=True)])] += 1
    pixel, along = seen["pixel"] / 1200, seen["along-spine"] / 1200
    assert along[1] > 1.2 * pixel[1] and along[2] > 1.1 * pixel[2], (pixel[1:3], along[1:3])
    assert along[17] >= 0.95 * pixel[17], (pixel[17], along[17])
    assert along[9] > 0.5


def test_the_time_cosine_decays_over_the_time_limit_or_the_steps_whichever_ends_first():
    """--schedule cosine-time: a time-boxed run ends at a rate near 0 whatever its steps per second."""
    from training.train import learning_rate_factor

    clock = {"seconds": 0.0}
    factor = learning_rate_factor(TrainOptions(steps=1000, schedule="cosine-time", time_limit_s=100.0, warmup_steps=10), lambda: clock["seconds"])
    assert factor(4) == pytest.approx(0.5)  # warm-up counts steps, as before
    clock["seconds"] = 50.0
    assert factor(20) == pytest.approx(0.5, abs=1e-9)  # half the time: half the cosine, though few steps have run
    clock["seconds"] = 100.0
    assert factor(30) == pytest.approx(0.0, abs=1e-12)
    clock["seconds"] = 1.0
    assert factor(1000) == pytest.approx(0.0, abs=1e-12)  # out of steps first
    assert learning_rate_factor(TrainOptions(steps=1000))(500) == pytest.approx(0.5)  # the step cosine unchanged
    with pytest.raises(ValueError, match="needs --time-limit"):
        learning_rate_factor(TrainOptions(schedule="cosine-time"))



def test_edge_padding_repeats_the_border_in_image_and_labels_alike(data_dir):
    """``sampler.edge_padded`` on a real 2.5D MR slice and its labels: each side grows by its own
    0..32 rows (columns), the slice itself sits unchanged inside, and every padded row or column
    repeats the border one in every image channel and in the label map alike (so the labels
    still say what the image shows); over many draws the margins cover the whole range."""
    from training.sampler import edge_padded

    run = recipe_config("verdiff-mr", channels=TINY, context_slices=1)
    case = datasets.run_case(datasets.mr_item(data_dir, "VB3_01"), run)
    s = int(np.argmax(case.labels.reshape(len(case.labels), -1).sum(1)))
    image, labels = SliceSampler([case], 96, 3, PRESETS["none"], context_slices=1, context_distance_mm=run.input_spacing_mm).sample_image(s)
    drawn = []
    rng = np.random.default_rng(3)
    for _ in range(200):
        (padded, padded_labels), (top, bottom, left, right) = edge_padded(image, labels, rng, 32)
        drawn += [top, bottom, left, right]
        rows, cols = labels.shape
        assert padded.shape == (3, rows + top + bottom, cols + left + right) and padded_labels.shape == padded.shape[1:]
        assert np.array_equal(padded[:, top : top + rows, left : left + cols], image)
        assert np.array_equal(padded_labels[top : top + rows, left : left + cols], labels)
        for array, plane in ((padded, (slice(None),)), (padded_labels, ())):
            inside = array[(*plane, slice(top, top + rows))]
            assert all(np.array_equal(array[(*plane, r)], inside[(*plane, 0)]) for r in range(top))
            assert all(np.array_equal(array[(*plane, top + rows + r)], inside[(*plane, rows - 1)]) for r in range(bottom))
    assert min(drawn) == 0 and max(drawn) == 32 and len(set(drawn)) > 25


def test_a_sampler_with_edge_padding_draws_crops_past_the_image_edge(data_dir):
    """``SliceSampler(edge_pad=32)`` on a real MR case, no augmentation: some crops begin with
    the slice's first row repeated (the crop reaches past the top edge), none more than 33 rows;
    without the option no crop of a slice whose top row varies does."""
    run = mr_run()
    cases, _ = datasets.training_cases(run, data_dir, limit=1)

    def top_repeats(sampler):
        counts = []
        for seed in range(300):
            image, _ = sampler.sample(seed)
            if image[0, 0].std() == 0:  # a flat row (air) repeats anyway
                continue
            n = 1
            while n < image.shape[1] and np.array_equal(image[:, n], image[:, 0]):
                n += 1
            counts.append(n)
        return np.array(counts)

    padded = top_repeats(SliceSampler(cases, 64, seed=11, augmentation=PRESETS["none"], edge_pad=32))
    plain = top_repeats(SliceSampler(cases, 64, seed=11, augmentation=PRESETS["none"]))
    assert (padded > 2).sum() >= 5 and padded.max() <= 33, np.bincount(padded)
    assert (plain > 2).sum() == 0, np.bincount(plain)


def tiny_mr_sampling_case(data_dir):
    """VB3_01 as a tiny 2.5D MR run prepares it, and the sampler arguments the bend and turn tests share."""
    run = recipe_config("verdiff-mr", channels=TINY, context_slices=1)
    case = datasets.run_case(datasets.mr_item(data_dir, "VB3_01"), run)
    return run, case, dict(context_slices=1, context_distance_mm=run.input_spacing_mm, pixel_mm=run.input_spacing_mm)


def test_a_coronal_bend_reads_each_row_from_its_own_slice_and_keeps_labels_with_it(data_dir):
    """``sampler.bent_slice`` on a real 2.5D MR case: with no shift it is the sampler's own
    slice (channels and labels bit for bit); with a shift of whole slices each row of each channel
    and of the label map is that row of the shifted slice, the edge slice beyond the ends; a
    fractional shift lies between its two slices."""
    from training.sampler import bent_slice, coronal_bend

    run, case, kwargs = tiny_mr_sampling_case(data_dir)
    sampler = SliceSampler([case], 96, 3, PRESETS["none"], **kwargs)
    s, rows = int(np.argmax(case.labels.reshape(len(case.labels), -1).sum(1))), case.images.shape[1]
    image, labels = sampler.sample_image(s)
    flat, flat_labels = bent_slice(case.images, case.labels, s, np.zeros(rows), sampler.offsets[0])
    assert np.allclose(flat, image, atol=1e-6) and np.array_equal(flat_labels, labels)
    shifts = np.where(np.arange(rows) < rows // 2, -8.0, 100.0)  # the top half 8 slices to one side, the rest past the last slice
    bent, bent_labels = bent_slice(case.images, case.labels, s, shifts, [0.0])
    top, last = slice(0, rows // 2), len(case.images) - 1
    assert np.array_equal(bent[0, top], case.images[s - 8, top]) and np.array_equal(bent_labels[top], case.labels[s - 8, top])
    assert np.array_equal(bent[0, rows // 2 :], case.images[last, rows // 2 :]) and np.array_equal(bent_labels[rows // 2 :], case.labels[last, rows // 2 :])
    half, _ = bent_slice(case.images, case.labels, s, np.full(rows, 0.5), [0.0])
    assert np.allclose(half[0], 0.5 * (case.images[s] + case.images[s + 1]), atol=1e-6)
    rng = np.random.default_rng(0)
    drawn = np.array([coronal_bend(rows, 12.0, run.input_spacing_mm, rng) for _ in range(200)])
    assert np.abs(drawn).max() <= 12.0 and np.abs(drawn).max() > 11.0
    assert np.abs(np.diff(drawn, axis=1)).max() < 12.0 * np.pi * run.input_spacing_mm / 120.0 + 1e-9  # smooth: no steeper than the shortest half-wave allows


def test_a_sampler_with_a_coronal_bend_moves_the_spine_across_slices_only_when_asked(data_dir):
    """``SliceSampler(coronal_bend_mm=12)`` on a real MR case, no other augmentation: the same
    seeds give the plain sampler's samples bit for bit where no bend is drawn, and about half the
    samples differ (a bend's draws come from a generator of their own), their masks still masks;
    0 mm gives the plain sampler's stream exactly, and a negative bend is refused."""
    run, case, kwargs = tiny_mr_sampling_case(data_dir)
    plain = SliceSampler([case], 96, 5, PRESETS["none"], **kwargs)
    bent = SliceSampler([case], 96, 5, PRESETS["none"], coronal_bend_mm=12.0, **kwargs)
    unbent = SliceSampler([case], 96, 5, PRESETS["none"], coronal_bend_mm=0.0, **kwargs)
    differ = 0
    for seed in range(60):
        (a, ma), (b, mb), (c, mc) = plain.sample(seed), bent.sample(seed), unbent.sample(seed)
        assert np.array_equal(a, c) and np.array_equal(ma, mc)
        differ += not np.array_equal(a, b)
        assert set(np.unique(mb)) <= {0.0, 1.0}
    assert 15 <= differ <= 45
    with pytest.raises(ValueError, match="coronal bend"):
        SliceSampler([case], 96, 5, PRESETS["none"], coronal_bend_mm=-1.0, **kwargs)


def test_an_axial_turn_reads_each_column_from_its_own_slice_through_the_bodies(data_dir):
    """``sampler.bent_slice`` with a shift per pixel on a real MR case: a whole-slice shift per
    column reads each column of image and labels from that slice; ``axial_turn`` shifts the
    columns linearly, by nothing at the labelled columns' centroid and by at most tan(angle) per
    column in slice units; the turned plane still cuts the bodies."""
    from training.sampler import axial_turn, bent_slice

    run, case, _ = tiny_mr_sampling_case(data_dir)
    s, (rows, cols) = int(np.argmax(case.labels.reshape(len(case.labels), -1).sum(1))), case.images.shape[1:]
    shifts = np.zeros((rows, cols))
    shifts[:, : cols // 2] = -6.0  # the anterior half six slices to one side
    turned, turned_labels = bent_slice(case.images, case.labels, s, shifts, [0.0])
    front, back = slice(0, cols // 2), slice(cols // 2, cols)
    assert np.array_equal(turned[0][:, front], case.images[s - 6][:, front]) and np.array_equal(turned_labels[:, front], case.labels[s - 6][:, front])
    assert np.array_equal(turned[0][:, back], case.images[s][:, back]) and np.array_equal(turned_labels[:, back], case.labels[s][:, back])
    rng = np.random.default_rng(0)
    pivot = np.nonzero(case.labels[s])[1].mean()
    drawn, slopes = [], []
    for _ in range(100):
        column_shifts = axial_turn(case.labels[s], 25.0, run.input_spacing_mm, case.slice_spacing_mm, rng)
        slope = np.diff(column_shifts)
        assert np.allclose(slope, slope[0]) and abs(np.interp(pivot, np.arange(cols), column_shifts)) < 1e-9
        drawn.append(column_shifts)
        slopes.append(slope[0])
    most = np.tan(np.deg2rad(25.0)) * run.input_spacing_mm / case.slice_spacing_mm
    assert np.abs(slopes).max() <= most + 1e-12 and np.abs(slopes).max() > 0.9 * most
    steepest = drawn[int(np.argmax(np.abs(slopes)))]
    _, labels = bent_slice(case.images, case.labels, s, steepest[None, :], [0.0])
    assert labels.astype(bool).sum() > 0.5 * case.labels[s].astype(bool).sum()


def test_a_sampler_with_an_axial_turn_turns_about_half_its_samples_only_when_asked(data_dir):
    """``SliceSampler(axial_turn_deg=25)`` on a real MR case, no other augmentation: where no turn
    is drawn a sample is the plain sampler's bit for bit, about half differ, masks stay masks; a
    coronal bend's samples are unchanged by a turn of 0; turns under 0 or from 90 degrees are refused."""
    run, case, kwargs = tiny_mr_sampling_case(data_dir)
    plain = SliceSampler([case], 96, 5, PRESETS["none"], **kwargs)
    turned = SliceSampler([case], 96, 5, PRESETS["none"], axial_turn_deg=25.0, **kwargs)
    bent = SliceSampler([case], 96, 5, PRESETS["none"], coronal_bend_mm=12.0, **kwargs)
    bent_unturned = SliceSampler([case], 96, 5, PRESETS["none"], coronal_bend_mm=12.0, axial_turn_deg=0.0, **kwargs)
    differ = 0
    for seed in range(60):
        (a, ma), (b, mb) = plain.sample(seed), turned.sample(seed)
        differ += not np.array_equal(a, b)
        if np.array_equal(a, b):
            assert np.array_equal(ma, mb)
        assert set(np.unique(mb)) <= {0.0, 1.0}
        (c, mc), (d, md) = bent.sample(seed), bent_unturned.sample(seed)
        assert np.array_equal(c, d) and np.array_equal(mc, md)
    assert 15 <= differ <= 45
    for degrees in (-1.0, 90.0):
        with pytest.raises(ValueError, match="axial turn"):
            SliceSampler([case], 96, 5, PRESETS["none"], axial_turn_deg=degrees, **kwargs)


def test_a_sampler_of_acquired_slices_only_draws_the_slices_the_volume_was_acquired_on(data_dir):
    """``--acquired-slices-only`` on real VB3_01 (1 mm slices interpolated from slices acquired
    4 mm apart): its index holds slices 0, 4, ..., 76 only, and every sample it draws (read whole,
    past the slice's size) is one of them; a case of acquired slices alone keeps all of them."""
    run, case, kwargs = tiny_mr_sampling_case(data_dir)
    plain = SliceSampler([case], 96, 3, PRESETS["none"], **kwargs)
    acquired = SliceSampler([case], 96, 3, PRESETS["none"], **kwargs, acquired_only=True)
    assert [s for _, s in plain.index] == list(range(77))
    assert [s for _, s in acquired.index] == list(range(0, 77, 4))
    assert {s for _, s in acquired.spine_index} == {s for s in range(0, 77, 4) if case.labels[s].any()}
    whole = SliceSampler([case], 192, 3, PRESETS["none"], **kwargs, acquired_only=True)  # a crop past the 180-pixel slices: the whole slice, padded
    for seed in range(8):
        image, _ = whole.sample(seed)
        centre = image[image.shape[0] // 2]
        matches = [s for s in range(77) if np.array_equal(pad_up_to(case.images[s], centre.shape), centre)]
        assert matches and all(s % 4 == 0 for s in matches)
    thick = dataclasses.replace(case, images=case.images[::4], labels=case.labels[::4], slice_spacing_mm=4.0)
    assert [s for _, s in SliceSampler([thick], 96, 3, PRESETS["none"], **kwargs, acquired_only=True).index] == list(range(20))


def test_blended_interpolated_labels_draw_each_from_an_acquired_neighbour_at_the_interpolation_weight(data_dir):
    """``--blend-interpolated-labels`` on real VB3_01 (1 mm slices interpolated from slices
    acquired 4 mm apart, each interpolated label the union of its neighbours'): an acquired slice
    keeps its label; slice 4k + j takes slice 4k + 4's label j times in 4 and slice 4k's otherwise,
    never the union; read whole (a crop past the slice's size, so the label cannot move the
    crop) the samples' images are the plain sampler's, bit for bit; a case acquired on its own
    slices keeps its labels."""
    run, case, kwargs = tiny_mr_sampling_case(data_dir)
    sampler = SliceSampler([case], 96, 3, PRESETS["none"], **kwargs, blend_interpolated=True)
    assert [s for _, s in sampler.index] == list(range(77))  # every slice is drawn
    rng = np.random.default_rng(0)
    assert np.array_equal(sampler.blended_label(0, 40, rng), case.labels[40])
    for below in (36, 40):  # slices whose acquired neighbours' labels differ
        above = below + 4
        assert not np.array_equal(case.labels[below], case.labels[above])
        for j in (1, 2, 3):
            draws = [sampler.blended_label(0, below + j, rng) for _ in range(400)]
            upper = sum(np.array_equal(d, case.labels[above]) for d in draws)
            lower = sum(np.array_equal(d, case.labels[below]) for d in draws)
            assert upper + lower == 400 and not any(np.array_equal(d, case.labels[below + j]) for d in draws)
            assert abs(upper / 400 - j / 4) < 0.08, (below, j, upper)
    whole = SliceSampler([case], 192, 3, PRESETS["none"], **kwargs, blend_interpolated=True)
    plain = SliceSampler([case], 192, 3, PRESETS["none"], **kwargs)
    changed = 0
    for seed in range(12):
        (image, masks), (plain_image, plain_masks) = whole.sample(seed), plain.sample(seed)
        assert np.array_equal(image, plain_image)
        changed += not np.array_equal(masks, plain_masks)
    assert changed  # some interpolated slice's union gave way to a neighbour's label
    thick = dataclasses.replace(case, images=case.images[::4], labels=case.labels[::4], slice_spacing_mm=4.0)
    own = SliceSampler([thick], 96, 3, PRESETS["none"], **kwargs, blend_interpolated=True)
    assert own.acquired == [None] and np.array_equal(own.blended_label(0, 5, rng), thick.labels[5])


def test_a_max_timestep_draws_the_training_timesteps_from_0_to_it_only():
    """``--max-timestep``: the noise levels around the card's start timestep (t = 150), not all T."""
    network = VerdiffNet(channels=TINY)

    def drawn(objective):
        return objective.draw(4096, (1, 4, 4), torch.Generator().manual_seed(0))["t"]

    t = drawn(objective_for("verdiff-net", network, max_timestep=300))
    assert int(t.min()) == 0 and int(t.max()) == 300
    assert int(drawn(objective_for("verdiff-net", network)).max()) > 900  # the default: all 1000
    with pytest.raises(ValueError, match="0..999"):
        objective_for("verdiff-net", network, max_timestep=1000)
    with pytest.raises(ValueError, match="verdiff-net"):
        objective_for("unet", network, max_timestep=300)
    assert "max_timestep" in RESUME_KEYS  # a resumed run continues with the timesteps it started with


def test_detached_prior_features_keep_the_diffusion_loss_out_of_the_prior_network():
    """``--detach-prior-features``: the prior network learns from the prior's loss alone; by
    default (the paper's joint training) the denoiser's loss also reaches its encoder."""
    torch.manual_seed(0)
    image, mask = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()

    def prior_gradients(network, term, **options):
        objective = objective_for("verdiff-net", network, **options)
        network.zero_grad()
        draws = objective.draw(2, (1, 32, 32), torch.Generator().manual_seed(1))
        objective(image, mask, **draws)[term].backward()
        return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in network.prior_net.parameters()])

    network = VerdiffNet(channels=TINY)
    prior_only = prior_gradients(network, "prior")
    assert torch.allclose(prior_gradients(network, "total", detach_prior_features=True), prior_only, atol=1e-6)
    assert not torch.allclose(prior_gradients(network, "total"), prior_only, atol=1e-6)
    assert prior_gradients(network, "simple", detach_prior_features=True).abs().sum() == 0
    with pytest.raises(ValueError, match="--detach-prior-features is for the verdiff-net family"):
        objective_for("unet", network, detach_prior_features=True)
    assert "detach_prior_features" in RESUME_KEYS


def test_a_coronal_run_exports_a_coronal_card_that_segments_the_volumes_coronal_planes(tmp_path, data_dir):
    """``train verdiff-mr --view coronal``: the run's config and the card it validates and exports
    with say ``view`` "coronal"; through ``segment`` that card samples the coronal planes of the
    volume (``preparation.coronal_view``), which at step 0 is the bundled card run on the turned
    volume, voxel for voxel, and its results come back in the volume's own geometry."""
    import argparse

    from training.__main__ import _train_parser, run_config_from_args
    from training.evaluate import card_data
    from VerdiffSegmentLib.models import get_card, parse_card
    from VerdiffSegmentLib.pipeline import segment
    from VerdiffSegmentLib.preparation import coronal_view

    parser = argparse.ArgumentParser()
    _train_parser(parser.add_subparsers(dest="command"))
    run = run_config_from_args(parser.parse_args(["train", "verdiff-mr", "--out", str(tmp_path), "--init", str(MODELS / "verdiff-mr.pt"), "--view", "coronal"]))
    assert run.view == "coronal" and run.to_dict()["view"] == "coronal" and run.context_slices == 1
    bundled = get_card("verdiff-mr")
    data = card_data(run, bundled.weights_path.name, bundled.sha256, 1, 2)
    assert data["input"]["view"] == "coronal"
    assert parse_card(json.loads(json.dumps(data)), bundled.path).view == "coronal"
    card = bundled.derived(input={**bundled.raw["input"], "view": data["input"]["view"]})  # the bundled card's sampling, turned
    volume = sitk.ReadImage(str(data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))
    slab = volume[:, :, 20:56]  # the 36 central sagittal slices (the third axis is left-right)
    ours = segment(slab, card, device="cpu", seed=3, keep_probability=True, per_vertebra=False)
    theirs = segment(coronal_view(slab), bundled, device="cpu", seed=3, keep_probability=True, per_vertebra=False)
    assert ours.settings["slices"] == theirs.settings["slices"] == slab.GetSize()[1]  # coronal planes: one per voxel front to back
    for a, b in ((ours.labels, theirs.labels), (ours.probability, theirs.probability), (ours.uncertainty, theirs.uncertainty)):
        assert a.GetDirection() == slab.GetDirection() and a.GetOrigin() == slab.GetOrigin() and a.GetSize() == slab.GetSize()
        assert b.GetDirection() != slab.GetDirection()
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert sitk.GetArrayViewFromImage(ours.labels).any()
    with pytest.raises(ValueError, match="view 'coronal' is for 2D runs on volumes"):
        run_config_from_args(parser.parse_args(["train", "verdiff-xray", "--out", str(tmp_path), "--view", "coronal"]))
