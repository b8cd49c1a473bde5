"""Slicer outputs written with real slicer-core MRML classes, checked by reading them back.

Real data from ../shared/data (lumbar MR with L1..L5 labels, a 2D X-ray JPG whose name has
spaces); no mocks. Geometry is checked against SimpleITK's own index-to-point mapping, so
a wrong LPS/RAS flip, axis order or handedness fix-up makes these tests fail.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MR_IMAGE = DATA / "mr-lumbar-vb3" / "VB3_01_img.nii.gz"
MR_LABELS = DATA / "mr-lumbar-vb3" / "VB3_01_seg.nii.gz"
XRAY_DIR = DATA / "xray-aasce" / "data" / "training"

try:
    from VerdiffSegmentLib.slicer_bound import mrml
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, str(REPO / "VerdiffSegment"))
    from VerdiffSegmentLib.slicer_bound import mrml
from VerdiffSegmentLib.errors import VerdiffError
from slicer.util import arrayFromVolume, arrayFromVTKMatrix

VERTEBRAE = [{"label": i, "name": f"L{i} vertebral body", "color": [0.2 * i, 0.5, 1.0 - 0.2 * i]} for i in range(1, 6)]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mr():
    """MR image, its L1..L5 label map and a float32 uncertainty map on the same grid."""
    assert MR_IMAGE.is_file() and MR_LABELS.is_file(), f"shared data missing under {DATA}"
    image = sitk.ReadImage(str(MR_IMAGE))
    labels = sitk.ReadImage(str(MR_LABELS))
    # Uncertainty high near label borders, as a segmentation ensemble would give.
    uncertainty = sitk.Cast(sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(labels, sitk.sitkFloat32), 1.0), sitk.sitkFloat32)
    return image, labels, uncertainty


@pytest.fixture(scope="module")
def xray():
    """A 2D X-ray (file name with spaces), given a non-trivial spacing/origin, with a dummy label map."""
    files = sorted(glob.glob(str(XRAY_DIR / "*.jpg")))
    assert files, f"no X-ray JPGs under {XRAY_DIR}"
    path = Path(files[0])
    assert " " in path.name
    image = sitk.ReadImage(str(path))
    assert image.GetDimension() == 2
    image.SetSpacing((0.3, 0.25))
    image.SetOrigin((12.5, -40.0))
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[200:420, 150:500] = 1
    array[600:700, 100:300] = 2
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    uncertainty = sitk.GetImageFromArray(np.linspace(0, 1, array.size, dtype=np.float32).reshape(array.shape))
    uncertainty.CopyInformation(image)
    return path.stem, image, labels, uncertainty


def ras_points_from_sitk(image: sitk.Image, indices) -> np.ndarray:
    """RAS positions of voxel indices computed by SimpleITK itself (independent of mrml.py)."""
    points = [image.TransformIndexToPhysicalPoint([int(i) for i in index[: image.GetDimension()]]) for index in indices]
    points = np.array([list(p) + [0.0] * (3 - len(p)) for p in points])
    return points * [-1, -1, 1]


def ijk_to_ras_of(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return arrayFromVTKMatrix(matrix)


def only_node(scene, class_name, name):
    nodes = [n for n in mrml.nodes_by_class(scene, class_name) if n.GetClassName() == class_name]
    matching = [n for n in nodes if n.GetName() == name]
    assert len(matching) == 1, f"{class_name} {name!r}: found {[n.GetName() for n in nodes]}"
    return matching[0]


def temp_leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "verdiff-mrb-*"))) | set(
        glob.glob(os.path.join(tempfile.gettempdir(), "verdiff-seg-*"))
    )


# ---------------------------------------------------------------------------- geometry


def test_ijk_to_ras_matches_simpleitk_points(mr, xray):
    image = mr[0]
    corners = [(0, 0, 0), (223, 0, 0), (0, 223, 0), (0, 0, 76), (223, 223, 76), (17, 101, 40)]
    ijk = np.c_[np.array(corners, float), np.ones(len(corners))]
    assert np.allclose((mrml.ijk_to_ras_matrix(image) @ ijk.T).T[:, :3], ras_points_from_sitk(image, corners))
    # The MR grid is left-handed (IPR): the case Slicer's reader would "fix" by default.
    assert np.linalg.det(mrml.ijk_to_ras_matrix(image)[:3, :3]) < 0

    image2d = xray[1]
    matrix = mrml.ijk_to_ras_matrix(image2d)
    assert np.allclose((matrix @ [[3, 7, 0, 1]][0])[:3], ras_points_from_sitk(image2d, [(3, 7)])[0])
    assert np.allclose(matrix[:3, 2], [0, 0, 1])  # slice axis: spacing 1, along S


def test_new_scene_is_set_up_for_bundles():
    scene = mrml.new_scene()
    try:
        assert scene.GetCacheManager() is not None and scene.GetDataIOManager() is not None
        assert scene.GetCacheManager().GetRemoteCacheDirectory() not in ("", os.getcwd())
        for class_name in ("vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", "vtkMRMLScalarVolumeNode"):
            assert scene.IsNodeClassRegistered(class_name), class_name
        assert scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None
        assert any(scene.GetNodeByID(i) for i in mrml.UNCERTAINTY_COLOR_NODE_IDS)
    finally:
        mrml.close_scene(scene)
    assert scene.GetNumberOfNodes() == 0


# ------------------------------------------------------------------------- round trips


def test_mr_outputs_reload_with_exact_geometry(mr, tmp_path):
    image, labels, uncertainty = mr
    before = temp_leftovers()
    cwd = os.getcwd()

    paths = mrml.write_outputs(image, labels, uncertainty, VERTEBRAE, "VB3_01", tmp_path / "out")

    assert paths == {"segmentation": tmp_path / "out" / "VB3_01.seg.nrrd", "scene": tmp_path / "out" / "VB3_01.mrb"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["VB3_01.mrb", "VB3_01.seg.nrrd"]
    assert temp_leftovers() == before
    with zipfile.ZipFile(paths["scene"]) as bundle:
        names = bundle.namelist()
    assert "VB3_01/VB3_01.mrml" in names
    assert {"VB3_01/Data/VB3_01.nrrd", "VB3_01/Data/VB3_01 uncertainty.nrrd", "VB3_01/Data/VB3_01 segmentation.seg.nrrd"} <= set(names)

    scene = mrml.read_scene_bundle(paths["scene"])
    try:
        assert os.getcwd() == cwd  # ReadFromMRB changes directory while unpacking
        assert len(mrml.nodes_by_class(scene, "vtkMRMLVolumeNode")) == 2
        assert len(mrml.nodes_by_class(scene, "vtkMRMLSegmentationNode")) == 1
        volume = only_node(scene, "vtkMRMLScalarVolumeNode", "VB3_01")
        uncertainty_node = only_node(scene, "vtkMRMLScalarVolumeNode", "VB3_01 uncertainty")
        segmentation_node = only_node(scene, "vtkMRMLSegmentationNode", "VB3_01 segmentation")

        expected = mrml.ijk_to_ras_matrix(image)
        assert np.allclose(ijk_to_ras_of(volume), expected, atol=1e-6)
        assert np.allclose(ijk_to_ras_of(uncertainty_node), expected, atol=1e-6)
        assert np.array_equal(arrayFromVolume(volume), sitk.GetArrayFromImage(image))
        assert arrayFromVolume(uncertainty_node).dtype == np.float32
        assert np.array_equal(arrayFromVolume(uncertainty_node), sitk.GetArrayFromImage(uncertainty))
        assert uncertainty_node.GetDisplayNode().GetColorNodeID() in mrml.UNCERTAINTY_COLOR_NODE_IDS
        # from 0 ("the samples agree") to the volume's maximum, as the Slicer module shows it (``mrml.show_uncertainty``)
        window = uncertainty_node.GetDisplayNode().GetWindowLevelMin(), uncertainty_node.GetDisplayNode().GetWindowLevelMax()
        assert window == pytest.approx((0.0, float(sitk.GetArrayViewFromImage(uncertainty).max())), abs=1e-5)
        assert volume.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"

        segmentation = segmentation_node.GetSegmentation()
        assert segmentation.GetSourceRepresentationName() == "Binary labelmap"
        assert list(segmentation.GetSegmentIDs()) == [f"label_{i}" for i in range(1, 6)]
        for entry in VERTEBRAE:
            segment = segmentation.GetSegment(f"label_{entry['label']}")
            assert segment.GetName() == entry["name"]
            assert np.allclose(segment.GetColor(), entry["color"], atol=1e-6)
        label_array = sitk.GetArrayFromImage(labels)
        assert mrml.segment_voxel_counts(segmentation_node) == {
            f"label_{i}": int(np.count_nonzero(label_array == i)) for i in range(1, 6)
        }
        labelmap = segmentation.GetSegment("label_1").GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        assert np.allclose(arrayFromVTKMatrix(matrix), expected, atol=1e-6)
        assert segmentation_node.GetNodeReference("referenceImageGeometryRef") is volume
    finally:
        mrml.close_scene(scene)

    written = sitk.ReadImage(str(paths["segmentation"]))
    assert written.GetSize() == labels.GetSize()
    assert np.allclose(written.GetSpacing(), labels.GetSpacing())
    assert np.allclose(written.GetOrigin(), labels.GetOrigin())
    assert np.allclose(written.GetDirection(), labels.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(written), label_array)
    assert written.GetMetaData("Segment0_ID") == "label_1"
    assert written.GetMetaData("Segment4_Name") == "L5 vertebral body"
    # Auto-generated names/colours may be replaced by Slicer from the terminology.
    assert written.GetMetaData("Segment0_NameAutoGenerated") == "0"
    assert written.GetMetaData("Segment0_ColorAutoGenerated") == "0"


def test_single_binary_segment(mr, tmp_path):
    image, labels, uncertainty = mr
    body = sitk.Cast(labels > 0, sitk.sitkUInt8)
    segments = [{"label": 1, "name": "Vertebral bodies", "color": [0.9, 0.8, 0.5]}]
    paths = mrml.write_outputs(image, body, uncertainty, segments, "VB3_01 bodies", tmp_path)
    scene = mrml.read_scene_bundle(paths["scene"])
    try:
        node = only_node(scene, "vtkMRMLSegmentationNode", "VB3_01 bodies segmentation")
        assert mrml.segment_voxel_counts(node) == {"label_1": int(np.count_nonzero(sitk.GetArrayFromImage(labels)))}
    finally:
        mrml.close_scene(scene)


def test_xray_2d_becomes_single_slice(xray, tmp_path):
    stem, image, labels, uncertainty = xray
    segments = [
        {"label": 1, "name": "T12 vertebral body", "color": [1.0, 0.0, 0.0]},
        {"label": 2, "name": "L1 vertebral body", "color": [0.0, 1.0, 0.0]},
    ]
    paths = mrml.write_outputs(image, labels, uncertainty, segments, stem, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{stem}.mrb", f"{stem}.seg.nrrd"])

    scene = mrml.read_scene_bundle(paths["scene"])
    try:
        volume = only_node(scene, "vtkMRMLScalarVolumeNode", stem)
        assert volume.GetImageData().GetDimensions() == (*image.GetSize(), 1)
        assert np.allclose(ijk_to_ras_of(volume), mrml.ijk_to_ras_matrix(image))
        assert np.allclose(np.diag(ijk_to_ras_of(volume))[:3], [-0.3, -0.25, 1.0])
        assert np.array_equal(arrayFromVolume(volume)[0], sitk.GetArrayFromImage(image))
        only_node(scene, "vtkMRMLScalarVolumeNode", f"{stem} uncertainty")
        segmentation_node = only_node(scene, "vtkMRMLSegmentationNode", f"{stem} segmentation")
        array = sitk.GetArrayFromImage(labels)
        assert mrml.segment_voxel_counts(segmentation_node) == {
            "label_1": int((array == 1).sum()),
            "label_2": int((array == 2).sum()),
        }
    finally:
        mrml.close_scene(scene)

    written = sitk.ReadImage(str(paths["segmentation"]))  # NRRD keeps the single slice as 3D
    assert written.GetSize() == (*labels.GetSize(), 1)
    assert np.allclose(written.GetSpacing(), (0.3, 0.25, 1.0))
    assert np.allclose(written.GetOrigin(), (12.5, -40.0, 0.0))
    assert np.array_equal(sitk.GetArrayFromImage(written)[0], array)


def test_labels_not_listed_are_left_out(mr, tmp_path):
    image, labels, _ = mr
    scene = mrml.new_scene()
    try:
        volume = mrml.add_scalar_volume(scene, image, "VB3_01")
        node = mrml.add_segmentation(scene, labels, [VERTEBRAE[0], VERTEBRAE[2]], "L1 and L3", volume)
        target = tmp_path / "l1l3.seg.nrrd"
        mrml.write_segmentation_nrrd(None, node, target)
        assert node.GetStorageNode() is None  # no scene given: scene untouched
        mrml.write_segmentation_nrrd(scene, node, tmp_path / "recorded.seg.nrrd")
        assert Path(node.GetStorageNode().GetFileName()) == tmp_path / "recorded.seg.nrrd"
    finally:
        mrml.close_scene(scene)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
    source = sitk.GetArrayFromImage(labels)
    assert set(np.unique(written)) == {0, 1, 3}
    assert np.array_equal(written == 3, source == 3) and np.array_equal(written == 1, source == 1)


def test_existing_outputs_are_replaced(mr, tmp_path):
    image, labels, uncertainty = mr
    (tmp_path / "VB3_01.mrb").write_bytes(b"old")
    (tmp_path / "VB3_01.seg.nrrd").write_bytes(b"old")
    paths = mrml.write_outputs(image, labels, uncertainty, VERTEBRAE[:1], "VB3_01", tmp_path)
    assert zipfile.is_zipfile(paths["scene"])
    assert sitk.ReadImage(str(paths["segmentation"])).GetSize() == labels.GetSize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VB3_01.mrb", "VB3_01.seg.nrrd"]


# ------------------------------------------------------------------------------ failures


def test_broken_bundles_raise(mr, tmp_path):
    image, labels, uncertainty = mr
    good = mrml.write_outputs(image, labels, uncertainty, VERTEBRAE, "VB3_01", tmp_path / "good")["scene"]

    def rewrite(name, change):
        target = tmp_path / name
        with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as bundle:
            for item in source.namelist():
                data = change(item, source.read(item))
                if data is not None:
                    bundle.writestr(item, data)
        return target

    broken = [
        rewrite("no_seg.mrb", lambda n, d: None if n.endswith(".seg.nrrd") else d),
        rewrite("cut_volume.mrb", lambda n, d: d[: len(d) // 2] if n.endswith("VB3_01.nrrd") else d),
        rewrite("bad_xml.mrb", lambda n, d: d[:300] if n.endswith(".mrml") else d),
    ]
    (tmp_path / "text.mrb").write_text("not a zip")
    for path in broken + [tmp_path / "text.mrb", tmp_path / "missing.mrb"]:
        with pytest.raises(VerdiffError, match=path.name):
            mrml.read_scene_bundle(path)


def test_bad_inputs_raise(mr, tmp_path):
    image, labels, uncertainty = mr
    shifted = sitk.Image(labels)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="label map"):
        mrml.write_outputs(image, shifted, uncertainty, VERTEBRAE, "x", tmp_path)
    with pytest.raises(ValueError, match="listed twice"):
        mrml.write_outputs(image, labels, uncertainty, VERTEBRAE[:1] * 2, "x", tmp_path)
    with pytest.raises(ValueError, match="colour"):
        mrml.write_outputs(image, labels, uncertainty, [{"label": 1, "name": "L1", "color": [255, 0, 0]}], "x", tmp_path)
    with pytest.raises(ValueError, match="integer"):
        mrml.write_outputs(image, sitk.Cast(labels, sitk.sitkFloat32), uncertainty, VERTEBRAE, "x", tmp_path)
    with pytest.raises(ValueError, match="stem"):
        mrml.write_outputs(image, labels, uncertainty, VERTEBRAE, "a/b", tmp_path)
    assert list(tmp_path.iterdir()) == []

    scene = mrml.new_scene()
    try:
        scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
        with pytest.raises(ValueError, match="no voxels"):
            mrml.write_scene_bundle(scene, tmp_path / "empty.mrb")
        with pytest.raises(VerdiffError, match="does not exist"):
            mrml.write_scene_bundle(scene, tmp_path / "nowhere" / "x.mrb")
    finally:
        mrml.close_scene(scene)

    scene = mrml.new_scene()
    try:
        mrml.add_scalar_volume(scene, image, "VB3_01")
        (tmp_path / "taken.mrb").mkdir()  # a folder where the file should go
        with pytest.raises(OSError):
            mrml.write_scene_bundle(scene, tmp_path / "taken.mrb")
    finally:
        mrml.close_scene(scene)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.mrb"]  # no partial file left
