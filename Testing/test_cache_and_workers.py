"""The portable case cache (training/cache.py) and the sampler's worker processes: a run
from the cache sees the data it would see from the images, and workers change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training import datasets
from training.augment import PRESETS
from training.cache import cropped, read_cache, write_cache
from training.configs import recipe_config
from training.sampler import SliceSampler
from training.train import TrainOptions, train


@pytest.fixture(scope="module")
def mr_cases(data_dir):
    run = recipe_config("verdiff-mr", channels=(4, 8))
    cases, split = datasets.training_cases(run, data_dir, limit=2)
    return run, cases, split


def test_the_cache_holds_the_cases_cut_to_the_spine(tmp_path, data_dir, mr_cases):
    run, cases, split = mr_cases
    summary = write_cache(run, data_dir, tmp_path / "mr.npz", limit=2)
    assert summary["cases"] == 2
    cached, cached_split = read_cache(tmp_path / "mr.npz", run)
    assert cached_split == json.loads(json.dumps(split))
    for case, copy in zip(cases, cached):
        cut = cropped(case)
        assert copy.name == case.name and np.array_equal(copy.labels, cut.labels) and copy.labels.sum() == case.labels.sum()
        assert np.abs(copy.images - cut.images).max() <= 0.5 / 255 + 1e-6  # uint8 steps
    # the network's width and 2.5D context draw from the same cases: one cache serves them (the
    # GPU sprint trains two widths from one); another label scheme would need other cases
    wider = read_cache(tmp_path / "mr.npz", recipe_config("verdiff-mr", channels=(8, 16), context_slices=1))[0]
    assert [c.name for c in wider] == [c.name for c in cached]
    with pytest.raises(ValueError, match="another run config"):
        read_cache(tmp_path / "mr.npz", recipe_config("verdiff-mr", channels=(4, 8), scheme="levels"))
    # LZMA members (module docstring), read by plain np.load
    with zipfile.ZipFile(tmp_path / "mr.npz") as archive:
        assert {member.compress_type for member in archive.infolist()} == {zipfile.ZIP_LZMA}


def test_workers_build_the_same_batches(mr_cases):
    _, cases, _ = mr_cases
    plain = SliceSampler(cases, 64, 35, PRESETS["any-contrast"])
    forked = SliceSampler(cases, 64, 35, PRESETS["any-contrast"])
    forked.start_workers(2)
    try:
        for _ in range(2):
            a, b = plain.batch(4), forked.batch(4)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    finally:
        forked.stop_workers()


def test_a_run_trains_from_the_cache(tmp_path, data_dir, mr_cases, one_thread):
    run, _, _ = mr_cases
    write_cache(run, data_dir, tmp_path / "mr.npz", limit=2)
    options = TrainOptions(steps=2, batch_size=2, crop=32, cache=str(tmp_path / "mr.npz"), tensorboard=False, workers=1)
    path = train(run, tmp_path / "no-data-here", tmp_path / "run", options)
    assert path.exists() and json.loads((tmp_path / "run" / "split.json").read_text(encoding="utf-8"))["train"] == ["VB3_01", "VB3_02"]


def test_a_2_5d_cache_keeps_the_slice_spacing_its_neighbours_are_placed_by(tmp_path, data_dir):
    """Every second slice cached: 2 mm between cached slices, so the neighbours stay at +-1.25 mm."""
    run = recipe_config("verdiff-mr", channels=(4, 8), context_slices=1)
    write_cache(run, data_dir, tmp_path / "mr.npz", limit=1, slice_step=2)
    cached, _ = read_cache(tmp_path / "mr.npz", run)
    assert cached[0].slice_spacing_mm == 2.0
    sampler = SliceSampler(cached, 32, 35, PRESETS["light"], context_slices=1, context_distance_mm=run.input_spacing_mm)
    assert np.allclose(sampler.offsets[0], [-0.625, 0.0, 0.625]) and sampler.batch(2)[0].shape == (2, 3, 32, 32)


def test_a_run_from_the_cache_needs_no_simpleitk(tmp_path, data_dir, mr_cases):
    """The lent GPU machine has no SimpleITK (session 15's first call failed on its import):
    training from a cache imports nothing that reads images."""
    run, _, _ = mr_cases
    write_cache(run, data_dir, tmp_path / "mr.npz", limit=1)
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "SimpleITK.py").write_text("raise ImportError('SimpleITK is not installed here')\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(root / "VerdiffSegment"), str(root)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "training", "train", "verdiff-mr", "--channels", "4,8", "--cache", str(tmp_path / "mr.npz"), "--train-steps", "1",
                           "--batch-size", "2", "--crop", "32", "--out", str(tmp_path / "run"), "--no-tensorboard", "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").exists()
