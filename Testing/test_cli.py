"""The main job end to end, through the ``verdiff`` command, on real images of each modality."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CT_IMAGE, CT_LABELS, MR_IMAGE, MR_LABELS, REPO, xray_image
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.slicer_bound.mrml import close_scene, nodes_by_class, read_scene_bundle

sys.path.insert(0, str(REPO / "benchmarks"))
from reliability import write_dicom_series  # noqa: E402  (benchmarks/ is not a package; one DICOM writer for the tests and the battery)


def verdiff(*args) -> dict:
    result = subprocess.run([sys.executable, "-m", "VerdiffSegmentLib.cli", *map(str, args)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return result


def segment_to(input_path: Path, outdir: Path, *options) -> dict:
    verdiff("segment", input_path, "-o", outdir, *options)
    reports = list(outdir.glob("*.json"))
    assert len(reports) == 1, "the JSON report must be the only .json in OUTDIR"
    return json.loads(reports[0].read_text(encoding="utf-8"))


def assert_same_geometry(image: sitk.Image, reference: sitk.Image):
    assert image.GetSize() == reference.GetSize()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing())
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def check_outputs(report: dict, source: Path, expected_dimension: int):
    source_image = sitk.ReadImage(str(source))
    outputs = report["outputs"]
    for key in ("labels", "uncertainty", "segmentation", "scene"):
        assert Path(outputs[key]).is_file(), key
    labels = sitk.ReadImage(outputs["labels"])
    uncertainty = sitk.ReadImage(outputs["uncertainty"])
    assert labels.GetDimension() == expected_dimension
    assert_same_geometry(labels, source_image)
    assert_same_geometry(uncertainty, source_image)
    assert uncertainty.GetPixelID() == sitk.sitkFloat32
    u = sitk.GetArrayViewFromImage(uncertainty)
    assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= 0.5 + 1e-6  # std of values in [0, 1]
    for key in ("model", "model_version", "steps", "ensemble", "device", "seed", "timings_seconds", "segments"):
        assert key in report, key
    for stage in ("read", "preprocess", "inference", "postprocess", "write", "total"):
        assert report["timings_seconds"][stage] >= 0
    segment = report["segments"][0]
    assert segment["name"] and segment["voxels"] > 0 and segment["mean_uncertainty"] is not None
    scene = read_scene_bundle(outputs["scene"])
    try:
        volumes = nodes_by_class(scene, "vtkMRMLScalarVolumeNode")
        segmentations = nodes_by_class(scene, "vtkMRMLSegmentationNode")
        assert len(volumes) == 2 and len(segmentations) == 1
        assert segmentations[0].GetSegmentation().GetNumberOfSegments() == len(report["segments"])
    finally:
        close_scene(scene)
    return sitk.GetArrayFromImage(labels)


def test_models_lists_the_bundled_models():
    out = verdiff("models").stdout
    for name in ("verdiff-ct", "verdiff-mr", "verdiff-xray"):
        assert name in out
    cards = json.loads(verdiff("models", "--json").stdout)
    assert {card["modality"] for card in cards} >= {"CT", "MR", "XR"}


def test_segment_mr_volume(tmp_path):
    report = segment_to(MR_IMAGE, tmp_path / "mr", "--seed", "3")
    assert report["model"] == "verdiff-mr"  # chosen by modality
    labels = check_outputs(report, MR_IMAGE, 3)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(MR_LABELS))) > 0
    # The bundled MR model's card reports 0.851 on this held-out subject at seed 0 (its
    # defaults); this guards against regressions of the path, not the issue-3 target (0.93).
    assert dice(labels > 0, truth) >= 0.82


def test_segment_xray_image_with_spaces_in_its_name(tmp_path):
    source = xray_image()
    assert " " in source.name
    report = segment_to(source, tmp_path / "x ray")
    assert report["model"] == "verdiff-xray"
    check_outputs(report, source, 2)
    assert (tmp_path / "x ray" / (source.name[:-4] + ".seg.nrrd")).is_file()


@pytest.fixture(scope="module")
def chest_ct(tmp_path_factory):
    """The CLI's report on the dev chest CT and its label map (one value per vertebra)."""
    outdir = tmp_path_factory.mktemp("ct")
    report = segment_to(CT_IMAGE, outdir)
    assert report["model"] == "verdiff-ct"
    return report, check_outputs(report, CT_IMAGE, 3)


def test_segment_dev_chest_ct_reaches_the_acceptance_dice(chest_ct):
    """All outputs on the dev chest CT, and issue 2's acceptance: binary Dice against its
    vertebra labels (ids 29-46) at least 0.85 (the card records 0.885; the chest CT is
    training data, the held-out abdominal CT's figure is in the card)."""
    _, labels = chest_ct
    truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(CT_LABELS))), range(29, 47))
    assert dice(labels > 0, truth) >= 0.85


def test_the_chest_cts_vertebrae_are_named_from_the_last_rib_bearing_one(chest_ct):
    """Issue 15 on CT: the chest CT (C5-L3) holds the thoracolumbar junction, so its pieces
    are named from the ribs (``ribs``, level source "ribs"): at least six named, each with the
    level of the truth vertebra it overlaps most (TotalSegmentator ids 29-46 = L3..C5), and
    T12 and L1 among them, and T10 and T11, which the model draws as one piece with two rib
    pairs that the per-vertebra step cuts in two (``levels._split_two_rib_pairs``), and T1,
    whose ribs are not found, counted up from T2 (``levels.one_vertebra_above``)."""
    from training.labels import SOURCES

    report, labels = chest_ct
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_LABELS)))
    named = [s for s in report["segments"] if s["level"]]
    assert len(named) >= 6 and {s["level_source"] for s in named} == {"ribs"}
    for segment in named:
        overlap = truth[(labels == segment["value"]) & np.isin(truth, range(29, 47))]
        assert SOURCES["totalsegmentator"][int(np.bincount(overlap).argmax())] == segment["level"], segment["name"]
    assert {"T1", "T10", "T11", "T12", "L1"} <= {s["level"] for s in named}


def test_a_lumbar_ct_is_named_up_from_the_sacrum(tmp_path, data_dir):
    """Issue 15 on a lumbar spine CT, no rib in view: the abdominal CT cropped to L2-S1 (62
    slices) through ``verdiff segment``. The CT model (trained on both development CTs, this
    one included: the mechanism end to end, not validation) draws S1, the iliac wings meet it,
    and the pieces are named up from it (level source "sacrum"), L5 and S1 among them, each
    the level of the truth vertebra it overlaps most."""
    from training.labels import SOURCES

    image = sitk.ReadImage(str(data_dir / "ct-abdomen-small" / "example_ct.nii.gz"))[:, :, 30:92]
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct-abdomen-small" / "example_ct_vertebrae.nii.gz")))[30:92]
    sitk.WriteImage(image, str(tmp_path / "lumbar_ct.nii.gz"))
    report = segment_to(tmp_path / "lumbar_ct.nii.gz", tmp_path / "out")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "lumbar_ct_labels.nrrd")))
    named = [s for s in report["segments"] if s["level"]]
    assert {s["level_source"] for s in named} == {"sacrum"} and {"L5", "S1"} <= {s["level"] for s in named}, report["segments"]
    for segment in named:
        overlap = truth[(labels == segment["value"]) & (truth > 0)]
        assert SOURCES["totalsegmentator"][int(np.bincount(overlap).argmax())] == segment["level"], segment["name"]


def test_dicom_series_folder(tmp_path):
    """A DICOM series folder takes the same path (written here from a real MR volume)."""
    image = sitk.ReadImage(str(MR_IMAGE))[:, :, 30:46]
    folder = write_dicom_series(image, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.12345")
    report = segment_to(folder, tmp_path / "out", "--steps", "2", "--ensemble", "1")
    labels = sitk.ReadImage(report["outputs"]["labels"])
    # DICOM cannot store this left-handed grid: the reader stacks the slices along the
    # right-handed normal. The outputs follow the series as read, which is the same space.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    as_read = reader.Execute()
    assert_same_geometry(labels, as_read)
    back = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels)[::-1])
    shutil.rmtree(folder)
