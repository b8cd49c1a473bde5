"""Bad input gets one clear error line, a non-zero exit, and leaves OUTDIR as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MR_IMAGE, copy_models, flip_a_byte


def run_verdiff(*args, env_models: Path | None = None):
    import os

    env = dict(os.environ)
    if env_models is not None:
        env["VERDIFF_MODELS_DIR"] = str(env_models)
    return subprocess.run([sys.executable, "-m", "VerdiffSegmentLib.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def assert_clean_failure(result, outdir: Path, before: list[str] | None, expected: str):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("verdiff: error: "), lines[0]
    assert expected.lower() in lines[0].lower(), lines[0]
    if before is None:
        assert not outdir.exists()
    else:
        assert sorted(p.name for p in outdir.iterdir()) == before
    leftovers = [p.name for p in outdir.parent.iterdir() if p.name.startswith(".verdiff-")]
    assert not leftovers


@pytest.fixture()
def outdir(tmp_path):
    return tmp_path / "out"


def mr_small() -> sitk.Image:
    """A real MR volume cut to 24 sagittal slices, to keep the error tests quick."""
    image = sitk.ReadImage(str(MR_IMAGE))
    return image[:, :, 26:50]


def test_missing_file(outdir, tmp_path):
    assert_clean_failure(run_verdiff("segment", tmp_path / "nothing.nii.gz", "-o", outdir), outdir, None, "not found")


def test_non_image_file(outdir, tmp_path):
    fake = tmp_path / "notes.nii.gz"
    fake.write_text("this is not an image\n")
    assert_clean_failure(run_verdiff("segment", fake, "-o", outdir), outdir, None, "cannot read")


def test_corrupt_png(outdir, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert_clean_failure(run_verdiff("segment", fake, "-o", outdir), outdir, None, "cannot read")


def test_rgb_image(outdir, tmp_path):
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(MR_IMAGE)))[:, :, 38]
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1).astype(np.uint8)
    path = tmp_path / "colour.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir), outdir, None, "components per pixel")


def test_4d_image(outdir, tmp_path):
    volume = mr_small()
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir), outdir, None, "4D")


def test_nan_image(outdir, tmp_path):
    volume = sitk.Cast(mr_small(), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(volume)
    array[10, 100, 100] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(volume)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(broken, str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir), outdir, None, "NaN")


def test_constant_image(outdir, tmp_path):
    volume = mr_small() * 0 + 7
    path = tmp_path / "flat.mha"
    sitk.WriteImage(volume, str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir), outdir, None, "constant")


def test_tampered_weights_leave_existing_outdir_unchanged(outdir, tmp_path):
    models = copy_models(tmp_path / "models")
    flip_a_byte(models / "verdiff-mr.pt")
    path = tmp_path / "mr.nii.gz"
    sitk.WriteImage(mr_small(), str(path))
    outdir.mkdir()
    (outdir / "earlier.txt").write_text("kept")
    result = run_verdiff("segment", path, "-o", outdir, "--model", "verdiff-mr", env_models=models)
    assert_clean_failure(result, outdir, ["earlier.txt"], "sha256")


def test_unknown_model(outdir, tmp_path):
    path = tmp_path / "mr.nii.gz"
    sitk.WriteImage(mr_small(), str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir, "--model", "no-such-model"), outdir, None, "unknown model")


def test_steps_out_of_range(outdir, tmp_path):
    path = tmp_path / "mr.nii.gz"
    sitk.WriteImage(mr_small(), str(path))
    assert_clean_failure(run_verdiff("segment", path, "-o", outdir, "--steps", "0"), outdir, None, "steps")
