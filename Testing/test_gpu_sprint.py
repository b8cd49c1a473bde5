"""The prepared GPU sprint (training/gpu_sprint.sh) runs end to end on the CPU with tiny
settings: caches of one subject each, two training steps per model, the weights and logs
where the device tool would bring them back. A lent GPU then needs no preparation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_sprint_prepares_and_trains_the_three_models_on_cpu(tmp_path, data_dir):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SPRINT_DIR": str(tmp_path / "sprint"),
        "OUT": str(tmp_path / "out"),
        "LIMIT": "1",
        "STEPS": "2",
        "CHANNELS": "4,8",
        "BATCH": "2",
        "CROP": "32",
        "WORKERS": "1",
        "DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "STEPS_BOTH": "2",
        "WORKERS_EACH": "1",
        "CROPS_MR": "32 40",
        "CROPS_XR": "32 48",
    }
    for stage in ("prepare", "mr", "xray-ct"):
        done = subprocess.run(["bash", "training/gpu_sprint.sh", stage], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "sprint").glob("*.npz")) == ["ct.npz", "mr.npz", "xr.npz"]
    for name in ("verdiff-mr", "verdiff-xray", "verdiff-ct"):
        run = tmp_path / "out" / name
        assert (run / "model.pt").exists() and (run / "run.json").exists() and (tmp_path / "out" / f"{name}.log").exists()
        assert not (run / "checkpoint.pt").exists()
    # the X-ray model trains on the bundled card's grid (4 px since session 6), with its gap channel
    config = json.loads((tmp_path / "out" / "verdiff-xray" / "run.json").read_text(encoding="utf-8"))["config"]
    card = json.loads((ROOT / "Resources" / "Models" / "verdiff-xray.json").read_text(encoding="utf-8"))
    assert config["spacing_mm"] == card["input"]["spacing_mm"] and config["labels"]["scheme"] == "binary-gaps"
    # the CT model on the shipped model's data (both CTs, S1 included), at the sprint's width
    ct = json.loads((tmp_path / "out" / "verdiff-ct" / "run.json").read_text(encoding="utf-8"))["config"]
    assert len(ct["datasets"]) == 2 and ct["labels"]["levels"][-1] == "S1" and ct["channels"] == [4, 8]
    # the one call (sessions 15-16): MR and X-ray, each at the bundled width from the bundled weights,
    # two crop sizes each, one archive per run with fp16 weights (the 8 files the tool brings back)
    env["OUT"] = str(tmp_path / "both")
    env["MR_OPTIONS"] = "--detach-prior-features"  # a modality's own extra options reach its runs only
    done = subprocess.run(["bash", "training/gpu_sprint.sh", "both"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = ("verdiff-mr-crop32", "verdiff-mr-crop40", "verdiff-xray-crop32", "verdiff-xray-crop48")
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == sorted([f"{r}.log" for r in runs] + [f"{r}.tar.gz" for r in runs])
    for name in runs:
        with tarfile.open(tmp_path / "both" / f"{name}.tar.gz") as archive:
            archive.extractall(tmp_path / "unpacked", filter="data")
        state = torch.load(tmp_path / "unpacked" / name / "model.pt", weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
        config = json.loads((tmp_path / "unpacked" / name / "run.json").read_text(encoding="utf-8"))
        assert config["config"]["channels"] == [16, 32, 64, 128] and config["settings"]["init"] is not None
        assert config["settings"]["crop"] == int(name.rsplit("crop", 1)[1])
        assert config["settings"]["schedule"] == "cosine-time" and config["settings"]["threads"] == 1
        # each modality's own recipe: the X-ray runs the bundled X-ray model's paper augmentation
        assert config["settings"]["augmentation"] == ("paper" if "xray" in name else "any-contrast")
        assert config["settings"]["detach_prior_features"] == ("mr" in name)
    if subprocess.run(["bash", "training/gpu_sprint.sh"], cwd=ROOT, env=env, capture_output=True).returncode != 2:
        pytest.fail("an unknown stage must exit 2")
