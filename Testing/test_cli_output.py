"""What ``verdiff segment`` says and writes: progress on stderr, the summary on stdout, NIfTI
outputs, the preview picture, the help texts' ranges, devices and modality warnings.
Real images, cut small where the test is about the command rather than the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import MR_IMAGE, xray_image
from VerdiffSegmentLib.models import AUTO_MODALITY, list_cards
from VerdiffSegmentLib.preview import CANVAS, OUTLINE
from VerdiffSegmentLib.progress import STAGES


def verdiff(*args, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "VerdiffSegmentLib.cli", *map(str, args)], capture_output=True, text=True, timeout=900)
    assert result.returncode == expect, result.stderr
    return result


@pytest.fixture(scope="module")
def mr_slab(tmp_path_factory) -> Path:
    """24 sagittal slices of a held-out real MR (its direction matrix is a permutation, IPR),
    as NRRD, so the NIfTI written from it has a geometry to get right."""
    path = tmp_path_factory.mktemp("input") / "mr slab.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(MR_IMAGE))[:, :, 26:50], str(path))
    return path


def assert_same_geometry(image: sitk.Image, reference: sitk.Image):
    assert image.GetSize() == reference.GetSize()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def assert_preview_shows_a_result(path: Path):
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert (picture.shape[1], picture.shape[0]) == CANVAS
    assert picture.std() > 20, "the preview is blank"
    outline = np.all(picture == OUTLINE, axis=-1).sum()
    assert outline > 100, f"only {outline} outline pixels"
    # The heat map: warm pixels (red well above blue) inside the picture's panel.
    warm = (picture[..., 0].astype(int) - picture[..., 2] > 60).sum()
    assert warm > 100, f"only {warm} heat-map pixels"


def test_progress_json_report_nifti_and_preview(tmp_path, mr_slab):
    outdir = tmp_path / "out"
    result = verdiff("segment", mr_slab, "-o", outdir, "--progress", "json", "--json", "--format", "nifti", "--preview", "--steps", "1", "--ensemble", "2")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(set(r) == {"stage", "done", "total", "elapsed_s"} for r in records), records[:3]
    stages = [r["stage"] for r in records]
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == list(STAGES)  # each stage, in order
    for stage in STAGES:
        last = [r for r in records if r["stage"] == stage][-1]
        assert last["done"] == last["total"] > 0, last
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)
    inference = [r for r in records if r["stage"] == "inference" and r["total"]]
    assert inference[-1]["total"] == 24  # the sagittal slices

    report = json.loads(result.stdout)
    outputs = report["outputs"]
    assert set(outputs) == {"labels", "uncertainty", "segmentation", "scene", "preview", "report"}
    assert sorted(Path(p).name for p in outputs.values()) == sorted(p.name for p in outdir.iterdir())
    assert json.loads(Path(outputs["report"]).read_text(encoding="utf-8")) == report
    assert outputs["labels"].endswith("mr slab_labels.nii.gz") and outputs["uncertainty"].endswith(".nii.gz")
    source = sitk.ReadImage(str(mr_slab))
    labels, uncertainty = sitk.ReadImage(outputs["labels"]), sitk.ReadImage(outputs["uncertainty"])
    assert_same_geometry(labels, source)
    assert_same_geometry(uncertainty, source)
    # one label value per vertebra (issue 15), 1..number of segments
    assert uncertainty.GetPixelID() == sitk.sitkFloat32 and sitk.GetArrayViewFromImage(labels).max() == len(report["segments"]) >= 1
    assert report["warnings"] == [] and report["output_format"] == "nifti"
    assert_preview_shows_a_result(Path(outputs["preview"]))


def test_plain_lines_and_text_summary_when_piped(tmp_path, mr_slab):
    outdir = tmp_path / "out"
    result = verdiff("segment", mr_slab, "-o", outdir, "--no-scene", "--steps", "1", "--ensemble", "1")
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("verdiff: ") and "\r" not in line and "\033" not in line for line in lines), lines
    assert "read" in lines[0] and "model loaded" in lines[0] and "sampling" in lines[0]
    assert any("sampled 24 slices" in line for line in lines) and "written" in lines[-1]
    report = json.loads((outdir / "mr slab.json").read_text(encoding="utf-8"))
    assert "scene" not in report["outputs"] and not list(outdir.glob("*.mrb"))
    assert sorted(Path(p).name for p in report["outputs"].values()) == sorted(p.name for p in outdir.iterdir())
    text = result.stdout
    assert "verdiff-mr" in text and "1 step x 1 samples" in text and "mean uncertainty" in text
    segment = report["segments"][0]
    assert f"{segment['volume_mm3'] / 1000:.2f} cm3" in text and f"{segment['mean_uncertainty']:.4f}" in text
    assert str(outdir.resolve()) in text and "mr slab_labels.nrrd" in text

    quiet = verdiff("segment", mr_slab, "-o", tmp_path / "quiet", "--quiet", "--steps", "1", "--ensemble", "1")
    assert quiet.stdout == "" and quiet.stderr == ""


def test_xray_nifti_in_pixels_with_preview(tmp_path):
    """A JPG radiograph has no pixel size: sizes in pixels, 2D NIfTI outputs, and a preview."""
    source = xray_image()
    outdir = tmp_path / "out"
    result = verdiff("segment", source, "-o", outdir, "--format", "nifti", "--preview", "--json", "--progress", "none")
    report = json.loads(result.stdout)
    # nothing on stderr but the run's own reliability warnings (this held-out image is a hard one: Dice 0.30)
    assert result.stderr.splitlines() == [f"verdiff: warning: {w}" for w in report["warnings"]]
    assert all("likely wrong" in w for w in report["warnings"])
    assert report["model"] == "verdiff-xray"
    segment = report["segments"][0]
    assert "area_mm2" not in segment and segment["area_px"] == segment["voxels"] > 0
    labels = sitk.ReadImage(report["outputs"]["labels"])
    assert labels.GetDimension() == 2
    assert_same_geometry(labels, sitk.ReadImage(str(source)))
    assert_preview_shows_a_result(Path(report["outputs"]["preview"]))


def test_help_lists_each_cards_ranges():
    text = " ".join(verdiff("segment", "--help").stdout.split())
    for card in list_cards():
        steps_range = card.steps_range()
        assert card.name in text
        if steps_range is not None:
            assert f"{steps_range[0]}-{steps_range[1]} for" in text
    assert any(card.steps_range() == (1, 151) for card in list_cards())  # the cards sampling from t=150
    assert "1-32" in text
    for option in ("--device", "--seed", "--batch-size", "--format", "--no-scene", "--preview", "--shard", "--progress", "--quiet", "--json"):
        assert option in text
    table = verdiff("models").stdout.splitlines()
    assert table[0].split()[:2] == ["model", "family"]
    marked = {line.split()[0] for line in table[1:] if line.split()[1:2] == ["*"]}
    assert marked == set(AUTO_MODALITY.values())


@pytest.mark.parametrize("device, expected", [("cuda:3", "cuda:3"), ("tpu", "unknown device")])
def test_an_absent_or_unknown_device_is_one_clear_error(tmp_path, mr_slab, device, expected):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a fourth GPU")
    result = verdiff("segment", mr_slab, "-o", tmp_path / "out", "--device", device, expect=2)
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if line.startswith("verdiff: error: ")]
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_model_of_another_modality_is_warned_about(tmp_path, mr_slab):
    result = verdiff("segment", mr_slab, "-o", tmp_path / "out", "--model", "verdiff-ct", "--steps", "1", "--ensemble", "1", "--json", "--progress", "none")
    report = json.loads(result.stdout)
    assert report["modality"] == {"model": "CT", "input": "MR"}
    # the modality warning comes first; a CT model on MR is also unsure of its result (reliability.py), and says so
    assert "verdiff-ct" in report["warnings"][0] and "verdiff-mr" in report["warnings"][0]
    assert not any(s["level_source"] == "ribs" for s in report["segments"])  # ribs are read in HU, and an MR has none
    assert result.stderr.strip().splitlines() == ["verdiff: warning: " + warning for warning in report["warnings"]]


def test_the_terminal_bar_redraws_one_line_with_an_eta():
    """``bar`` mode (a terminal's default) on the stage sequence a run reports."""
    import io

    from VerdiffSegmentLib.progress import ProgressPrinter, StageTracker

    stream = io.StringIO()
    printer = ProgressPrinter("bar", stream)
    tracker = StageTracker(printer)
    for stage in ("read", "load_model"):
        printer(stage, 0, 1)
        printer(stage, 1, 1)
    printer("preprocess", 0, 1)
    assert tracker.cancel() is False  # segment asks before its first batch: sampling starts
    for done in (8, 16, 24):
        tracker("inference", done, 24)
    printer("postprocess", 1, 1)
    printer.end_line()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r\033[K") >= 10  # redrawn in place, never scrolled
    frames = text.split("\r\033[K")
    assert any(frame.startswith("inference [######") and "8/24" in frame and "eta 0:00:" in frame for frame in frames), frames
    assert "preprocessed" in text and "postprocessed" in text and frames[-1] == ""


def test_the_text_summary_names_the_vertebrae_left_out():
    """An X-ray card's C7 (``vertebrae_left_out`` of the report, levels.py step 4) is named under
    the segments; a report without one prints no such line."""
    from VerdiffSegmentLib.cli import human_summary

    report = {"input": "xray.jpg", "model": "verdiff-xray", "model_version": "0.1.0", "family": "verdiff-net", "device": "cpu", "steps": 1,
              "ensemble": 2, "seed": 0, "timings_seconds": {"total": 1.1}, "outputs": {"report": "/tmp/out/xray.json"},
              "segments": [{"name": "T1 vertebral body", "voxels": 3210, "area_px": 3210, "mean_uncertainty": 0.021}],
              "vertebrae_left_out": [{"level": "C7", "name": "C7 vertebral body", "voxels": 2874}]}
    assert "  left out, beyond the levels the model segments: C7 vertebral body\n" in human_summary(report)
    assert "left out" not in human_summary({**report, "vertebrae_left_out": []})
