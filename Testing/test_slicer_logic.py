"""The Slicer module's logic, headless: real MRML scenes (slicer-core), real dev data, the
real bundled models at small settings (steps=2, ensemble=2), run as the module runs them:
in a real ``verdiff segment`` process whose progress is read and whose outputs are loaded.

The test bodies live in ``VerdiffSegmentLib/slicer_bound/testing.py`` so that ``VerdiffSegmentTest``
runs the same checks inside 3D Slicer (``Slicer --testing``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

try:
    from VerdiffSegmentLib.slicer_bound import mrml, slicer_logic, testing
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, str(REPO / "VerdiffSegment"))
    from VerdiffSegmentLib.slicer_bound import mrml, slicer_logic, testing
from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.models import list_cards

import slicer

# Central sagittal slices of the held-out MR volume that the MR tests segment: the real
# subject, geometry and spine, at a fraction of the full volume's sampling time.
MR_SAGITTAL_SLICES = 24


@pytest.fixture(scope="module", autouse=True)
def _data_present():
    if not DATA.is_dir():
        pytest.fail(f"the development data is missing: {DATA}")


@pytest.fixture
def scene():
    scene = mrml.new_scene()
    yield scene
    mrml.close_scene(scene)


@pytest.fixture(scope="module")
def mr():
    """One MR segmentation shared by the MR tests: (scene, volume node, source image,
    outputs, computation). Building it already checks every output."""
    scene = mrml.new_scene()
    source = testing.mr_image(DATA, MR_SAGITTAL_SLICES)
    volume = testing.add_volume(scene, source, testing.MR_CASE)
    outputs, computation = testing.check_segment_volume(scene, volume, source, expected_model="verdiff-mr")
    yield scene, volume, source, outputs, computation
    mrml.close_scene(scene)


# --------------------------------------------------------------------------- input


def test_read_input_is_exact_for_the_full_mr_volume(scene):
    """RAS->LPS, IJK order and voxel values survive the node -> SimpleITK conversion
    (the MR file has a left-handed IPR grid, which Slicer's reader would otherwise flip)."""
    source = testing.mr_image(DATA)
    volume = testing.add_volume(scene, source, "full MR")
    image = testing.check_read_input_exact(volume, source)
    assert image.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-12)
    assert image.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-9)
    assert image.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-12)


def test_read_input_is_exact_for_an_oblique_volume(scene):
    source = testing.synthetic_image()
    volume = testing.add_volume(scene, source, "oblique")
    testing.check_read_input_exact(volume, source)


def test_read_input_of_an_xray_is_a_single_slice(scene):
    source = testing.xray_image(DATA)
    assert source.GetDimension() == 2
    volume = testing.add_volume(scene, source, "xray")
    image = testing.check_read_input_exact(volume, source)
    assert image.GetSize() == (*source.GetSize(), 1)


def add_rgb_volume(scene):
    """A colour image as Slicer holds one (a vector volume): (200, 100, 50) with a (10, 20, 30)
    square at rows and columns 5-9."""
    rgb = np.zeros((1, 20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 5:10, 5:10] = (10, 20, 30)
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, rgb)
    return node


def assert_rgb_volume_as_luminance(grey: np.ndarray) -> None:
    """``grey`` [1, 20, 30] is ``add_rgb_volume``'s image by luminance (ITU-R BT.601 weights)."""
    assert grey[0, 0, 0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert grey[0, 6, 6] == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30, abs=1e-3)


def test_read_input_turns_rgb_into_grey(scene):
    """A colour image loaded in Slicer is a vector volume: it is read by luminance."""
    grey = sitk.GetArrayFromImage(slicer_logic.read_input(add_rgb_volume(scene)))
    assert grey.shape == (1, 20, 30)
    assert_rgb_volume_as_luminance(grey)


# ------------------------------------------------------------------------------ MR


def test_mr_outputs_geometry_names_colours_terminology_hierarchy(mr):
    scene, volume, source, outputs, computation = mr
    # check_segment_volume ran every check when the fixture was built; spell out the essentials
    assert computation.settings["model"] == "verdiff-mr"
    assert computation.settings["steps"] == 2 and computation.settings["ensemble"] == 2
    segmentation = outputs.segmentation.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    # one segment per vertebral body, top-down: named bottom-up from L5 when at least five
    # were found (extra ones above: T12, ...), else unnamed
    from VerdiffSegmentLib.levels import levels_by_count

    expected = levels_by_count(len(names), ["L1", "L2", "L3", "L4", "L5"])
    if len(names) >= 5:
        assert names == [f"{level} vertebral body" for level in expected] and names[-1] == "L5 vertebral body"
    else:
        assert names == [f"vertebral body {i}" for i in range(1, len(names) + 1)]
    segment = segmentation.GetNthSegment(0)
    entry = testing._segment_tag(segment, "TerminologyEntry")
    region = f"^{expected[0]} vertebra" if expected[0] else "SCT^122496007^Lumbar spine"
    assert "SCT^3572006^Vertebral body" in entry and region in entry
    assert outputs.uncertainty.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    rows = testing._table_rows(outputs.statistics)
    assert rows[0]["Voxels"] > 0, "the MR model found no vertebral body in the held-out subject"


def test_mr_applying_again_replaces_the_outputs(mr):
    scene, volume, source, _outputs, computation = mr
    previous = [nodes[0] for nodes in slicer_logic.find_outputs(scene, volume).values()]
    count = scene.GetNumberOfNodes()
    again = slicer_logic.apply_result(scene, volume, computation)
    testing.check_outputs(scene, volume, again, computation)
    assert scene.GetNumberOfNodes() == count
    assert all(scene.GetNodeByID(node.GetID()) is None for node in previous)


def test_mr_cancel_mid_run_leaves_the_scene_unchanged(mr):
    scene, volume, *_ = mr
    testing.check_cancel_leaves_scene_unchanged(scene, volume)


def test_mr_errors_leave_the_scene_unchanged(mr):
    scene, volume, *_ = mr
    testing.check_errors_leave_scene_unchanged(scene, volume)


def test_mr_tampered_weights_leave_the_scene_unchanged(mr):
    scene, volume, *_ = mr
    testing.check_tampered_weights_leave_scene_unchanged(scene, volume, "verdiff-mr")


def test_mr_failure_while_adding_outputs_rolls_back(mr):
    scene, volume, source, outputs, computation = mr
    testing.check_failed_apply_rolls_back(scene, volume, computation)


# --------------------------------------------------------------------------- X-ray


def test_xray_outputs_under_a_transform(scene):
    """A 2D X-ray loaded as a single-slice volume: auto picks the X-ray model, outputs are
    single slices on its grid, the table reports areas, and outputs follow the input's
    parent transform."""
    source = testing.xray_image(DATA)
    volume = testing.add_volume(scene, source, "xray")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table tilt")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    outputs, computation = testing.check_segment_volume(scene, volume, source, expected_model="verdiff-xray")
    assert outputs.uncertainty.GetImageData().GetDimensions()[2] == 1
    assert outputs.uncertainty.GetTransformNodeID() == transform.GetID()
    assert "Area" in testing._table_rows(outputs.statistics)[0]
    import json

    angles = json.loads(outputs.statistics.GetAttribute("VerdiffSegment.cobb_angles_deg"))
    assert angles == computation.measurements["cobb_angles_deg"] and set(angles) == {"PT", "MT", "TL"}


def test_xray_second_run_replaces_and_spares_other_inputs(scene):
    source = testing.xray_image(DATA)
    volume = testing.add_volume(scene, source, "xray")
    other = testing.add_volume(scene, source, "xray copy")
    testing.check_second_run_replaces(scene, volume, other_volume_node=other)


def test_xray_cancel_after_sampling_leaves_the_scene_unchanged(scene):
    """One batch only: the cancel lands after sampling, before the scene is touched."""
    source = testing.xray_image(DATA)
    volume = testing.add_volume(scene, source, "xray")
    testing.check_cancel_leaves_scene_unchanged(scene, volume)


# ---------------------------------------------------------------------- small parts


def test_terminology_of_every_bundled_model_reads_back_in_slicer():
    cards = {card.name: card for card in list_cards()}
    assert {"verdiff-mr", "verdiff-ct", "verdiff-xray"} <= set(cards)
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for name, (type_code, region_code) in testing.EXPECTED_TERMINOLOGY.items():
        for label in cards[name].labels:
            entry = slicer_logic.terminology_for_label(label)
            terminology = slicer.vtkSlicerTerminologyEntry()
            assert logic.DeserializeTerminologyEntry(entry, terminology), entry
            assert logic.SerializeTerminologyEntry(terminology) == entry
            assert terminology.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
            assert terminology.GetTypeObject().GetCodeValue() == type_code
            assert terminology.GetCategoryObject().GetCodeValue() == "123037004"
            parsed = slicer_logic.parse_terminology(entry)
            assert parsed["region"][1] == region_code


def test_terminology_follows_what_a_label_covers():
    body = slicer_logic.parse_terminology(slicer_logic.terminology_for_label({"name": "Vertebral bodies", "covers": "T1-L5"}))
    assert body["type"] == slicer_logic.VERTEBRAL_BODY and body["region"] == ("", "", "")
    whole = slicer_logic.parse_terminology(slicer_logic.terminology_for_label({"name": "Vertebrae", "covers": "whole vertebrae C3-C7"}))
    assert whole["type"] == slicer_logic.VERTEBRA and whole["region"] == slicer_logic.SPINE_REGIONS["C"]
    to_sacrum = slicer_logic.parse_terminology(slicer_logic.terminology_for_label({"name": "Vertebrae", "covers": "whole vertebrae C5-S1"}))
    assert to_sacrum["region"] == ("", "", "")  # the cervical to the sacral spine: no one region
    given = "ctx~SCT^1^a~SCT^2^b~^^~anat~^^~^^"
    assert slicer_logic.terminology_for_label({"name": "x", "terminology": given}) == given


def test_device_choice_falls_back_to_cpu_with_a_warning():
    assert slicer_logic.choose_device("cpu") == ("cpu", None)
    info = slicer_logic.device_info()
    device, warning = slicer_logic.choose_device("cuda")
    if info["cuda"]:
        assert (device, warning) == ("cuda", None)
    else:
        assert device == "cpu" and "CUDA was selected" in warning
        assert slicer_logic.choose_device("auto")[1]
    with pytest.raises(VerdiffError):
        slicer_logic.choose_device("tpu")


def test_list_models_gives_the_bundled_cards():
    assert {card.name for card in slicer_logic.list_models()} >= {"verdiff-mr", "verdiff-ct", "verdiff-xray"}


def test_only_sampling_models_offer_steps_and_ensemble():
    """The GUI greys the steps and ensemble boxes for deterministic families."""
    from VerdiffSegmentLib.models import get_card

    verdiff = get_card("verdiff-mr")
    assert slicer_logic.samples(verdiff)
    assert not slicer_logic.samples(verdiff.derived(family="unet"))
    assert not slicer_logic.samples(verdiff.derived(name="x", family="no-such-family"))


def test_process_job_progress_cancel_and_errors(scene):
    """The pieces the Slicer GUI drives with qt.QProcess, with real processes on a few
    real MR slices: progress from chunked stderr, outputs read back, a kill mid-run, an error line."""
    source = testing.mr_image(DATA, 6)
    volume = testing.add_volume(scene, source, "MR slab")
    testing.check_process_job(scene, volume)


def test_write_input_is_exact_for_the_full_mr_volume_and_an_xray(scene):
    """The file handed to the process is the node, voxel for voxel and in the same place
    (the MR's left-handed grid, the X-ray's single slice, an oblique volume)."""
    for name, source in (("full MR", testing.mr_image(DATA)), ("xray", testing.xray_image(DATA)), ("oblique", testing.synthetic_image())):
        testing.check_write_input_exact(testing.add_volume(scene, source, name))


def test_write_input_of_an_rgb_volume_is_grey(scene, tmp_path):
    written = sitk.ReadImage(str(slicer_logic.write_input(add_rgb_volume(scene), tmp_path)))
    assert written.GetNumberOfComponentsPerPixel() == 1
    assert_rgb_volume_as_luminance(sitk.GetArrayViewFromImage(written))


def test_dependencies_are_found_and_nothing_is_installed_when_all_are_there():
    """What the module's install button checks: torch, numpy and SimpleITK import here, so
    installing asks nothing and changes nothing."""
    from VerdiffSegmentLib.slicer_bound import dependencies

    assert dependencies.missing() == []
    assert dependencies.install(confirm_pip=lambda packages: pytest.fail(f"asked to install {packages}")) is True


def test_the_status_line_shows_an_undetermined_cobb_angle_as_not_determined():
    """The module's status line formats the report's angles through ``cobb_angle_texts``: a
    ``null`` angle (``cobb.cobb_measurements``: the spine stops short of it) reads "n/d", never 0."""
    from VerdiffSegmentLib.slicer_bound.slicer_logic import cobb_angle_texts

    assert cobb_angle_texts({"PT": 61.98, "MT": None, "TL": 0.0}) == {"PT": "62.0\u00b0", "MT": "n/d", "TL": "0.0\u00b0"}
