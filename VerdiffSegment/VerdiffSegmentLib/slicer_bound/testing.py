"""Test bodies for the Slicer module's logic, shared by two runners:

- ``Testing/test_slicer_logic.py`` runs them headless under pytest on a scene from
  :func:`mrml.new_scene` (real MRML classes from slicer-core);
- ``VerdiffSegmentTest`` in ``VerdiffSegment.py`` runs the same functions inside 3D
  Slicer (``Slicer --testing``) on ``slicer.mrmlScene``.

Each ``check_*`` function takes the scene (and a volume node where it needs one), does
the work through :mod:`slicer_logic` and raises ``AssertionError`` with a message on the
first thing that is wrong. No Qt, no pytest, no mocks: real data, real models, real
MRML nodes, and the real ``verdiff segment`` process the module runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import mrml, slicer_logic
from ..errors import Cancelled, VerdiffError
from ..settings import SegmentSettings
from ..terminology import LEVEL_CODES, SPINE_REGIONS

# Small settings for tests: the real models and data, few sampling steps.
SMALL = SegmentSettings(steps=2, ensemble=2, device="cpu", seed=0)

MR_CASE = "VB3_17"  # held out from training (see the verdiff-mr card)


def check(condition, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


# ------------------------------------------------------------------------- data


def find_data_dir() -> Path | None:
    """The development data: ``$VERDIFF_DATA_DIR``, else ``shared/data`` beside the
    checkout (searched upwards from this file), else None."""
    if os.environ.get("VERDIFF_DATA_DIR"):
        path = Path(os.environ["VERDIFF_DATA_DIR"])
        return path if path.is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def mr_image(data_dir: Path, sagittal_slices: int | None = None) -> sitk.Image:
    """The held-out lumbar MR volume; optionally only its ``sagittal_slices`` central
    sagittal slices (the axis whose direction is closest to left-right), which keeps
    the real geometry (origin moves with the crop) and makes the test faster."""
    image = sitk.ReadImage(str(Path(data_dir) / "mr-lumbar-vb3" / f"{MR_CASE}_img.nii.gz"))
    if sagittal_slices:
        direction = np.reshape(image.GetDirection(), (3, 3))
        axis = int(np.argmax(np.abs(direction[0, :])))  # LPS x = left-right
        size = image.GetSize()[axis]
        count = min(int(sagittal_slices), size)
        start = (size - count) // 2
        index = [slice(None)] * 3
        index[axis] = slice(start, start + count)
        image = image[tuple(index)]
    return image


def xray_path(data_dir: Path) -> Path:
    """A held-out AASCE X-ray (from the verdiff-xray card's validation split; its file
    name contains spaces)."""
    from ..models import get_card

    name = get_card("verdiff-xray").validation_cases[0]
    return Path(data_dir) / "xray-aasce" / "data" / "training" / f"{name}.jpg"


def xray_image(data_dir: Path) -> sitk.Image:
    return sitk.ReadImage(str(xray_path(data_dir)))


def synthetic_image(shape=(12, 48, 40), seed: int = 0) -> sitk.Image:
    """A small non-constant volume with an oblique geometry (for runs without the
    development data, e.g. inside Slicer on a build machine): a bright column of
    'vertebrae' in noise."""
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, shape).astype(np.float32)
    k, j, i = shape
    for top in range(4, j - 6, 9):
        array[k // 4 : 3 * k // 4, top : top + 6, i // 3 : i // 3 + 8] += 150
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((12.0, -30.5, 7.25))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    image.SetDirection(rotation.ravel().tolist())
    return image


def add_volume(scene, image: sitk.Image, name: str):
    """Add ``image`` as a scalar volume node with its exact geometry (a 2D image becomes
    one slice, as a 2D X-ray loaded into Slicer)."""
    return mrml.add_scalar_volume(scene, image, name)


def put_in_study(scene, volume_node, patient: str = "Test patient", study: str = "Test study") -> int:
    """Place ``volume_node`` in a new patient/study of the subject hierarchy, as a DICOM
    import would; returns the study item."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient_item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient)
    study_item = hierarchy.CreateStudyItem(patient_item, study)
    item = hierarchy.GetItemByDataNode(volume_node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume_node)
    hierarchy.SetItemParent(item, study_item)
    return study_item


# -------------------------------------------------------------------- snapshots


def snapshot(scene) -> dict:
    """What a user sees of ``scene``: every node (id, class, name, attributes, node
    references, modification time) and the subject-hierarchy tree."""
    nodes = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        names = node.GetAttributeNames() or ()
        references = {}
        for r in range(node.GetNumberOfNodeReferenceRoles()):
            role = node.GetNthNodeReferenceRole(r)
            references[role] = [node.GetNthNodeReferenceID(role, n) for n in range(node.GetNumberOfNodeReferences(role))]
        nodes[node.GetID()] = {
            "class": node.GetClassName(),
            "name": node.GetName(),
            "attributes": {name: node.GetAttribute(name) for name in names},
            "references": references,
            "mtime": node.GetMTime(),
        }
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = {}
    if hierarchy is not None:
        ids = vtk.vtkIdList()
        hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), ids, True)
        for i in range(ids.GetNumberOfIds()):
            item = ids.GetId(i)
            data_node = hierarchy.GetItemDataNode(item)
            items[item] = (hierarchy.GetItemParent(item), hierarchy.GetItemName(item), data_node.GetID() if data_node else None)
    return {"nodes": nodes, "items": items}


def check_unchanged(before: dict, after: dict, compare_mtime: bool = True) -> None:
    """Raise unless two snapshots show the same scene. With ``compare_mtime`` no node may
    even have been modified (right for work that failed before touching the scene)."""
    added = sorted(set(after["nodes"]) - set(before["nodes"]))
    removed = sorted(set(before["nodes"]) - set(after["nodes"]))
    check(not added and not removed, f"scene nodes changed: added {added}, removed {removed}")
    for node_id, was in before["nodes"].items():
        now = after["nodes"][node_id]
        for key in ("class", "name", "attributes", "references") + (("mtime",) if compare_mtime else ()):
            check(was[key] == now[key], f"node {node_id} changed its {key}: {was[key]!r} -> {now[key]!r}")
    check(before["items"] == after["items"], f"subject hierarchy changed: {before['items']} -> {after['items']}")


# -------------------------------------------------------------------- geometry


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ras_of_sitk_index(image: sitk.Image, index) -> np.ndarray:
    """RAS position of a voxel computed by SimpleITK itself (independent of our code)."""
    point = image.TransformIndexToPhysicalPoint([int(i) for i in index[: image.GetDimension()]])
    point = list(point) + [0.0] * (3 - len(point))
    return np.array(point) * [-1, -1, 1]


def check_read_input_exact(volume_node, reference: sitk.Image | None = None) -> sitk.Image:
    """``read_input`` gives the node's voxels and geometry exactly: every voxel value, and
    the RAS position of sample voxels through SimpleITK (LPS) equal to the node's
    IJK-to-RAS. With ``reference`` (the image the node was made from), also equal to it."""
    image = slicer_logic.read_input(volume_node)
    array = sitk.GetArrayViewFromImage(image)
    node_array = slicer.util.arrayFromVolume(volume_node)
    check(array.shape == node_array.shape, f"read_input shape {array.shape} != node {node_array.shape}")
    check(np.array_equal(array, node_array), "read_input changed voxel values")
    matrix = ijk_to_ras(volume_node)
    size = image.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    for ijk in corners + [tuple(n // 2 for n in size)]:
        expected = (matrix @ np.array([*ijk, 1.0]))[:3]
        check(np.allclose(ras_of_sitk_index(image, ijk), expected, atol=1e-6), f"voxel {ijk} placed wrongly by read_input")
    if reference is not None:
        check(np.array_equal(array.reshape(sitk.GetArrayViewFromImage(reference).shape), sitk.GetArrayViewFromImage(reference)), "voxels differ from the source image")
        ref_size = list(reference.GetSize()) + [1] * (3 - reference.GetDimension())
        check(list(size) == ref_size, f"size {size} != source {ref_size}")
        for ijk in corners:
            check(
                np.allclose(ras_of_sitk_index(image, ijk), ras_of_sitk_index(reference, ijk), atol=1e-6),
                f"voxel {ijk} is not where the source image has it",
            )
    return image


def _segment_tag(segment, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def _table_rows(table_node) -> list[dict]:
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            value = table.GetValue(r, c)
            row[name] = value.ToString() if value.IsString() else value.ToDouble()
        rows.append(row)
    return rows


EXPECTED_TERMINOLOGY = {
    # model -> (type code, region code or "")
    "verdiff-mr": ("3572006", "122496007"),  # vertebral bodies, lumbar spine
    "verdiff-xray": ("3572006", ""),  # vertebral bodies, T1-L5 (no single region)
    "verdiff-ct": ("51282000", ""),  # whole vertebrae
}


def check_outputs(scene, volume_node, outputs, computation, parent_item: int | None = None) -> None:
    """Everything the module promises about its outputs, checked on the real nodes."""
    model = computation.settings["model"]
    result = computation
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    base = volume_node.GetName()
    matrix = ijk_to_ras(volume_node)
    dims = volume_node.GetImageData().GetDimensions()

    # --- bookkeeping: found again by attribute and reference, all in the input's study
    found = slicer_logic.find_outputs(scene, volume_node)
    for role, node in zip(slicer_logic.ROLES, outputs.nodes()):
        check(scene.GetNodeByID(node.GetID()) is node, f"{role} node is not in the scene")
        check(found[role] == [node], f"find_outputs({role}) gives {[n.GetID() for n in found[role]]}, expected [{node.GetID()}]")
        check(node.GetAttribute(slicer_logic.ROLE_ATTRIBUTE) == role, f"{role} node lacks its role attribute")
        settings = json.loads(node.GetAttribute(slicer_logic.SETTINGS_ATTRIBUTE))
        check(settings["model"] == model, f"{role} settings name model {settings['model']}, not {model}")
        if hierarchy is not None:
            item = hierarchy.GetItemByDataNode(node)
            check(item, f"{role} node has no subject-hierarchy item")
            expected_parent = parent_item if parent_item is not None else hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume_node))
            check(hierarchy.GetItemParent(item) == expected_parent, f"{role} node is not under the input's parent item")
        if node.IsA("vtkMRMLTransformableNode"):
            check(node.GetTransformNodeID() == volume_node.GetTransformNodeID(), f"{role} node is not under the input's transform")

    # --- uncertainty volume: same grid, float32, heat colour map, values of a std of probabilities
    uncertainty_node = outputs.uncertainty
    check(uncertainty_node.GetName() == f"{base} uncertainty", f"uncertainty volume named {uncertainty_node.GetName()!r}")
    check(np.array_equal(ijk_to_ras(uncertainty_node), matrix), "uncertainty volume IJK-to-RAS differs from the input's")
    check(uncertainty_node.GetImageData().GetDimensions() == dims, "uncertainty volume dimensions differ from the input's")
    uncertainty = slicer.util.arrayFromVolume(uncertainty_node)
    check(uncertainty.dtype == np.float32, f"uncertainty is {uncertainty.dtype}, not float32")
    check(np.isfinite(uncertainty).all() and uncertainty.min() >= 0 and uncertainty.max() <= 0.5 + 1e-4, "uncertainty outside [0, 0.5]")
    check(np.allclose(uncertainty, sitk.GetArrayViewFromImage(result.uncertainty).reshape(uncertainty.shape)), "uncertainty voxels differ from the result")
    display = uncertainty_node.GetScalarVolumeDisplayNode()
    check(display is not None and display.GetColorNodeID() in slicer_logic.UNCERTAINTY_COLOR_NODE_IDS, "uncertainty has no heat colour map")
    check(display.GetWindowLevelMin() == 0.0, "uncertainty colour map does not start at 0")

    # --- segmentation: one named, coloured segment per vertebra (per label of a run without
    # per_vertebra), with terminology, on the input grid
    segmentation_node = outputs.segmentation
    check(segmentation_node.GetName() == f"{base} vertebrae", f"segmentation named {segmentation_node.GetName()!r}")
    segmentation = segmentation_node.GetSegmentation()
    expected = result.segments
    check(segmentation.GetNumberOfSegments() == len(expected), f"{segmentation.GetNumberOfSegments()} segments for {len(expected)} result segments")
    labels = sitk.GetArrayViewFromImage(result.labels).reshape(uncertainty.shape)
    check(set(np.unique(labels)) - {0} <= {int(label["value"]) for label in expected}, "the label map has values without a segment")
    counts = mrml.segment_voxel_counts(segmentation_node)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic() if hasattr(slicer, "vtkSlicerTerminologiesModuleLogic") else None
    for label in expected:
        segment_id = mrml.segment_id(label["value"])
        segment = segmentation.GetSegment(segment_id)
        check(segment is not None, f"no segment {segment_id} for label {label['name']!r}")
        check(segment.GetName() == label["name"], f"segment named {segment.GetName()!r}, result says {label['name']!r}")
        check(np.allclose(segment.GetColor(), label["color"]), f"segment colour {segment.GetColor()} != result {label['color']}")
        level = label.get("level")
        check(_segment_tag(segment, mrml.LEVEL_TAG) == level, f"segment level tag differs from {level!r}")
        entry = _segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        check(entry == (label.get("terminology") or slicer_logic.terminology_for_label(label)), f"terminology entry {entry!r}")
        parsed = slicer_logic.parse_terminology(entry)
        check(parsed["context"] == slicer_logic.TERMINOLOGY_CONTEXT, f"terminology context {parsed['context']!r}")
        check(parsed["category"] == slicer_logic.ANATOMICAL_STRUCTURE, f"terminology category {parsed['category']}")
        check(parsed["type"][0] == "SCT", f"terminology type {parsed['type']} is not SNOMED CT")
        if model in EXPECTED_TERMINOLOGY:
            type_code, region_code = EXPECTED_TERMINOLOGY[model]
            if level and type_code == "51282000":  # a named whole vertebra: its level's own code
                type_code, region_code = LEVEL_CODES[level], SPINE_REGIONS[level[0]][1]
            elif level:  # a named vertebral body: in its level's vertebra
                region_code = LEVEL_CODES[level]
            check(parsed["type"][1] == type_code, f"{model}: terminology type {parsed['type']}, expected SCT {type_code}")
            check(parsed["region"][1] == region_code, f"{model}: terminology region {parsed['region']}, expected {region_code or 'none'}")
        if terminologies is not None:  # Slicer's own parser reads it back to the same string
            terminology = slicer.vtkSlicerTerminologyEntry()
            check(terminologies.DeserializeTerminologyEntry(entry, terminology), f"Slicer cannot parse {entry!r}")
            check(terminologies.SerializeTerminologyEntry(terminology) == entry, "terminology entry does not round-trip in Slicer")
        check(counts[segment_id] == int((labels == label["value"]).sum()), f"segment {segment_id} voxel count differs from the result")

    # the shared labelmap sits exactly on the input's voxel grid ...
    first = segmentation.GetSegment(mrml.segment_id(expected[0]["value"]))
    labelmap = first.GetRepresentation(mrml.BINARY_LABELMAP)
    image_to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    check(np.allclose(slicer.util.arrayFromVTKMatrix(image_to_world), matrix, atol=1e-6), "segmentation labelmap is not on the input's grid")
    reference = segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    check(reference, "segmentation has no reference image geometry")
    check(segmentation_node.GetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole()) == volume_node.GetID(), "segmentation does not reference the input as its geometry")
    # ... and its voxels are where the result's label voxels are, in RAS
    extent = labelmap.GetExtent()
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1
    )
    full = np.zeros(uncertainty.shape, voxels.dtype)
    full[extent[4] : extent[5] + 1, extent[2] : extent[3] + 1, extent[0] : extent[1] + 1] = voxels
    check(np.array_equal(full > 0, labels > 0), "segmentation voxels differ from the result's label map")

    # --- statistics table: a row per segment, matching the segment and the uncertainty volume
    table_node = outputs.statistics
    check(table_node.GetName() == f"{base} vertebra statistics", f"table named {table_node.GetName()!r}")
    rows = _table_rows(table_node)
    check(len(rows) == len(expected), f"{len(rows)} table rows for {len(expected)} segments")
    single_slice = 1 in dims
    measure = "Area" if single_slice else "Volume"
    spacing = np.array(volume_node.GetSpacing())
    unit_size = float(np.prod(spacing[np.array(dims) != 1][:2])) if single_slice else float(np.prod(spacing))
    check(table_node.GetColumnUnitLabel(measure) == ("mm2" if single_slice else "mm3"), f"{measure} column has no unit")
    for row, label in zip(rows, expected):
        inside = labels == label["value"]
        check(row["Segment"] == label["name"], f"table row names {row['Segment']!r}")
        check(row["Level"] == (label.get("level") or ""), f"table row level {row['Level']!r}")
        check(row["Level from"] == (label.get("level_source") or ""), f"table row's level source {row['Level from']!r}")
        posterior = label.get("level_posterior")
        check(np.isnan(row["Level posterior"]) if posterior is None else abs(row["Level posterior"] - posterior) < 1e-9, f"table row's level posterior {row['Level posterior']!r}")
        check(int(row["Label value"]) == int(label["value"]), "table label value differs from the segment's")
        if label.get("height_mm") is not None:
            check(abs(row["Height"] - label["height_mm"]) < 1e-6, "table height differs from the result")
        check(int(row["Voxels"]) == int(inside.sum()), "table voxel count differs from the label map")
        check(abs(row[measure] - inside.sum() * unit_size) <= 1e-3 * max(1.0, inside.sum() * unit_size), f"table {measure} is wrong")
        if inside.any():
            check(abs(row["Mean uncertainty"] - float(uncertainty[inside].mean())) < 1e-5, "table mean uncertainty is wrong")
            check(abs(row["Max uncertainty"] - float(uncertainty[inside].max())) < 1e-5, "table max uncertainty is wrong")
            check(row["Mean uncertainty"] <= row["Max uncertainty"], "mean uncertainty above max")
        else:
            check(np.isnan(row["Mean uncertainty"]), "empty segment must have no mean uncertainty")


def check_label_positions(volume_node, outputs, source: sitk.Image, samples: int = 50) -> None:
    """Label voxels of the segmentation lie, in RAS, where SimpleITK places the same
    voxels of the source image: catches a lost LPS->RAS flip or swapped axes."""
    labelmap = outputs.segmentation.GetSegmentation().GetNthSegment(0).GetRepresentation(mrml.BINARY_LABELMAP)
    image_to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    matrix = slicer.util.arrayFromVTKMatrix(image_to_world)
    extent = labelmap.GetExtent()
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1
    )
    kji = np.argwhere(voxels > 0)
    if not len(kji):
        kji = np.argwhere(np.ones_like(voxels, bool))  # no label: still check the grid
    rng = np.random.default_rng(0)
    for k, j, i in kji[rng.choice(len(kji), min(samples, len(kji)), replace=False)]:
        ijk = (i + extent[0], j + extent[2], k + extent[4])
        world = (matrix @ np.array([*ijk, 1.0]))[:3]
        check(np.allclose(world, ras_of_sitk_index(source, ijk), atol=1e-4), f"label voxel {ijk} is at {world}, source image has it elsewhere")


# ----------------------------------------------------------------- test bodies


def check_write_input_exact(volume_node) -> None:
    """The file the process reads holds the node's voxels and geometry exactly: the same
    as :func:`slicer_logic.read_input` (itself checked against SimpleITK), so a flip or a
    resampling on the way to the process cannot go unnoticed."""
    expected = slicer_logic.read_input(volume_node)
    with tempfile.TemporaryDirectory(prefix="verdiff-test-") as folder:
        written = sitk.ReadImage(str(slicer_logic.write_input(volume_node, folder)))
    check(written.GetSize() == expected.GetSize(), f"written size {written.GetSize()} != node {expected.GetSize()}")
    check(np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)), "written voxels differ from the node's")
    for what in ("GetSpacing", "GetOrigin", "GetDirection"):
        check(np.allclose(getattr(written, what)(), getattr(expected, what)(), atol=1e-6), f"written {what[3:].lower()} differs from the node's")


def check_segment_volume(scene, volume_node, source: sitk.Image | None = None, model: str = "auto", settings: SegmentSettings | None = None, expected_model: str | None = None):
    """Segment ``volume_node`` (placed in a study) through the logic's steps (the input
    written for the process, the real ``verdiff segment`` process, its outputs applied)
    and check every output and the progress read from the process. Returns
    ``(outputs, computation)``."""
    settings = dataclasses.replace(SMALL if settings is None else settings, model=model)
    study = put_in_study(scene, volume_node)
    check_read_input_exact(volume_node, source)
    check_write_input_exact(volume_node)
    stages = []
    computation = slicer_logic.compute(volume_node, settings, progress=lambda stage, done, total: stages.append((stage, done, total)))
    if expected_model:
        check(computation.settings["model"] == expected_model, f"model {computation.settings['model']} chosen, expected {expected_model}")
    check(stages and stages[0] == ("read", 0, 1) and stages[-1] == ("write", 1, 1), f"progress stages {stages}")
    inference = [s for s in stages if s[0] == "inference"]
    check(inference and inference[-1][1] == inference[-1][2] > 0, f"inference progress never reached all slices: {inference}")
    outputs = slicer_logic.apply_result(scene, volume_node, computation)
    check_outputs(scene, volume_node, outputs, computation, parent_item=study)
    if source is not None:
        check_label_positions(volume_node, outputs, source)
    return outputs, computation


def check_second_run_replaces(scene, volume_node, settings: SegmentSettings | None = None, other_volume_node=None) -> None:
    """Running again on the same input replaces its outputs (found by attribute and
    reference even after the user renamed them), keeps the node count, and leaves the
    outputs of other inputs alone."""
    settings = SMALL if settings is None else settings
    first = slicer_logic.run(scene, volume_node, settings)
    other_outputs = slicer_logic.run(scene, other_volume_node, settings) if other_volume_node is not None else None
    first.segmentation.SetName("renamed by the user")
    first.statistics.SetName("my table")
    count = scene.GetNumberOfNodes()
    items = len(snapshot(scene)["items"])
    second = slicer_logic.run(scene, volume_node, settings)
    for old in first.nodes():
        check(scene.GetNodeByID(old.GetID()) is None, f"old output {old.GetID()} is still in the scene")
    for new in second.nodes():
        check(scene.GetNodeByID(new.GetID()) is new, f"new output {new.GetID()} is not in the scene")
    check(scene.GetNumberOfNodes() == count, f"node count went from {count} to {scene.GetNumberOfNodes()}: outputs pile up")
    check(len(snapshot(scene)["items"]) == items, "subject hierarchy items pile up")
    found = slicer_logic.find_outputs(scene, volume_node)
    check(all(len(nodes) == 1 for nodes in found.values()), f"more than one output per role: {found}")
    if other_outputs is not None:
        for node in other_outputs.nodes():
            check(scene.GetNodeByID(node.GetID()) is node, "outputs of another input were removed")


def check_cancel_leaves_scene_unchanged(scene, volume_node, settings: SegmentSettings | None = None) -> None:
    """A cancel requested once sampling has started ends the real process (terminated,
    then killed) with ``Cancelled``; no progress is passed on after it, its temporary
    folder is gone, and every node is untouched, earlier outputs included."""
    settings = dataclasses.replace(SMALL if settings is None else settings, batch_size=2)
    before = snapshot(scene)
    temporary_before = _temporary_folders()
    batches = []

    def progress(stage, done, total):
        if stage == "inference":
            batches.append(done)

    try:
        slicer_logic.run(scene, volume_node, settings, progress=progress, cancel=lambda: len(batches) >= 1)
    except Cancelled:
        pass
    else:
        raise AssertionError("a cancel requested mid-run did not stop the run")
    check(batches == [batches[0]] and batches[0] < 10**9, f"the run went on after the cancel: batches {batches}")
    check(_temporary_folders() == temporary_before, "the cancelled run left its temporary folder")
    check_unchanged(before, snapshot(scene))
    # a cancel before anything started
    try:
        slicer_logic.run(scene, volume_node, settings, cancel=lambda: True)
    except Cancelled:
        pass
    else:
        raise AssertionError("an immediate cancel did not stop the run")
    check_unchanged(before, snapshot(scene))


def _temporary_folders() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob("verdiff-slicer-*")}


def check_errors_leave_scene_unchanged(scene, volume_node, settings: SegmentSettings | None = None) -> None:
    """Bad input and bad options fail with one clear ``VerdiffError`` (from the process
    where it finds them) and touch nothing."""
    settings = SMALL if settings is None else settings
    constant = add_volume(scene, sitk.Image([32, 32, 6], sitk.sitkInt16) + 7, "constant volume")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    before = snapshot(scene)
    cases = [
        ("constant volume", constant, {}, "constant"),
        ("unknown model", volume_node, {"model": "no-such-model"}, "unknown model"),
        ("too many steps", volume_node, {"model": "verdiff-mr", "steps": 152}, "steps"),
        ("too large ensemble", volume_node, {"ensemble": 33}, "ensemble"),
        ("labelmap input", labelmap, {}, "not a scalar volume"),
        ("no input", None, {}, "no input"),
    ]
    for what, node, options, expected in cases:
        try:
            slicer_logic.run(scene, node, dataclasses.replace(settings, **options))
        except VerdiffError as error:
            check(str(error) and "\n" not in str(error), f"{what}: error message is not one clear line: {error!r}")
            check(expected in str(error), f"{what}: the error does not say what is wrong: {error}")
        else:
            raise AssertionError(f"{what}: no error")
        check_unchanged(before, snapshot(scene))
    for node in (constant, labelmap):
        slicer_logic.remove_output_node(scene, node)  # with its subject-hierarchy item


@contextmanager
def models_dir_copy(tamper: str | None = None):
    """A copy of the bundled models in a temporary folder, used through
    ``$VERDIFF_MODELS_DIR``; with ``tamper`` the weights of that model get one byte changed."""
    from ..models import list_cards, models_dir

    source = models_dir()
    previous = os.environ.get("VERDIFF_MODELS_DIR")
    with tempfile.TemporaryDirectory(prefix="verdiff-models-") as folder:
        for card in list_cards(source):
            shutil.copy2(card.path, folder)
            shutil.copy2(card.weights_path, folder)
            if card.name == tamper:
                weights = Path(folder) / card.weights_path.name
                data = bytearray(weights.read_bytes())
                data[len(data) // 2] ^= 0xFF
                weights.write_bytes(bytes(data))
        os.environ["VERDIFF_MODELS_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("VERDIFF_MODELS_DIR", None)
            else:
                os.environ["VERDIFF_MODELS_DIR"] = previous


def check_tampered_weights_leave_scene_unchanged(scene, volume_node, model: str, settings: SegmentSettings | None = None) -> None:
    """Weights whose sha256 no longer matches their card are refused by the process before
    anything is unpickled, with a clear error, and the scene is untouched."""
    settings = dataclasses.replace(SMALL if settings is None else settings, model=model)
    before = snapshot(scene)
    with models_dir_copy(tamper=model):
        try:
            slicer_logic.run(scene, volume_node, settings)
        except VerdiffError as error:
            check("sha256" in str(error), f"tampered weights: unclear error {error}")
        else:
            raise AssertionError("tampered weights were accepted")
    check_unchanged(before, snapshot(scene))


def check_failed_apply_rolls_back(scene, volume_node, computation) -> None:
    """A failure while the outputs are being built (here: a result segment that cannot
    become a segment, met after the uncertainty volume was already added) removes
    everything built so far; earlier outputs of the input stay as they were."""
    before = snapshot(scene)
    previous = slicer_logic.find_outputs(scene, volume_node)
    bad_segment = {"value": 99, "name": "", "covers": "nothing", "color": [1, 0, 0], "voxels": 0}
    bad = dataclasses.replace(computation, segments=list(computation.segments) + [bad_segment])
    try:
        slicer_logic.apply_result(scene, volume_node, bad)
    except ValueError:
        pass
    else:
        raise AssertionError("a broken result segment did not fail")
    check_unchanged(before, snapshot(scene), compare_mtime=False)
    check(slicer_logic.find_outputs(scene, volume_node) == previous, "earlier outputs changed after a failed run")


def check_process_job(scene, volume_node, settings: SegmentSettings | None = None) -> None:
    """The pieces the GUI drives with ``qt.QProcess``, driven here by hand with a real
    process: the job's command runs the CLI on the written input, its stderr (fed in
    small chunks, as a QProcess delivers it) gives the progress, ``finish`` reads the
    outputs back and removes the temporary folder; a process that is killed mid-run (the
    GUI's Cancel) leaves no folder and no scene change; a failing process gives its error line."""
    import subprocess

    settings = SMALL if settings is None else settings
    before = snapshot(scene)
    job = slicer_logic.Job(volume_node, settings)
    check(job.command.arguments[:3] == ["-m", "VerdiffSegmentLib.cli", "segment"], f"command {job.command.arguments}")
    process = subprocess.Popen([job.command.program, *job.command.arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=job.command.full_environment())
    stdout, stderr = process.communicate(timeout=900)
    reports = []
    for start in range(0, len(stderr), 7):  # chunks that cut lines anywhere
        reports += job.output.feed_stderr(stderr[start : start + 7].decode("utf-8", "replace"))
    computation = job.finish(process.returncode, stdout.decode("utf-8"))
    check(not job.folder.exists(), "finish left the temporary folder")
    check([r for r in reports if r[0] == "inference"][-1][1] > 0, f"no inference progress parsed: {reports}")
    check(reports[-1] == ("write", 1, 1), f"the last progress report is {reports[-1]}")
    check(computation.settings["steps"] == settings.steps and computation.settings["ensemble"] == settings.ensemble, f"the process ran {computation.settings}")
    check_unchanged(before, snapshot(scene))  # the process did not touch the scene

    job = slicer_logic.Job(volume_node, settings)
    process = subprocess.Popen([job.command.program, *job.command.arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=job.command.full_environment())
    for line in process.stderr:  # the GUI's Cancel once sampling has started: terminate, then kill
        if any(stage == "inference" for stage, _, _ in job.output.feed_stderr(line.decode())):
            break
    from ..process import stop

    stop(process)
    check(process.returncode is not None and process.returncode != 0, f"the cancelled process ended with {process.returncode}")
    job.close()
    check(not job.folder.exists(), "a cancelled job left its temporary folder")
    check_unchanged(before, snapshot(scene))

    failing = slicer_logic.Job(volume_node, dataclasses.replace(settings, model="no-such-model"))
    process = subprocess.run([failing.command.program, *failing.command.arguments], capture_output=True, env=failing.command.full_environment(), timeout=600)
    failing.output.feed_stderr(process.stderr.decode())
    try:
        failing.finish(process.returncode, process.stdout.decode())
    except VerdiffError as error:
        check("unknown model 'no-such-model'" in str(error), f"the process's error line was not passed on: {error}")
    else:
        raise AssertionError("a failing process gave no error")
    check(not failing.folder.exists(), "a failed job left its temporary folder")
    check_unchanged(before, snapshot(scene))


def module_test_source(data_dir: Path | None):
    """What ``VerdiffSegmentTest`` segments: (image, node name, the model auto must pick) of
    the held-out MR's central slices, or of a synthetic volume without the development data."""
    if data_dir is not None:
        return mr_image(data_dir, 24), MR_CASE, "verdiff-mr"
    return synthetic_image(), "synthetic", None


def check_module_logic(scene, data_dir: Path | None) -> None:
    """Every logic check of the headless suite in one call, for ``VerdiffSegmentTest`` in
    Slicer: a volume segmented and checked, cancel, errors, roll-back, tampered weights, the
    process job; with the development data, also an X-ray run twice."""
    source, name, model = module_test_source(data_dir)
    volume = add_volume(scene, source, name)
    _outputs, computation = check_segment_volume(scene, volume, source, expected_model=model)
    check_cancel_leaves_scene_unchanged(scene, volume)
    check_errors_leave_scene_unchanged(scene, volume)
    check_failed_apply_rolls_back(scene, volume, computation)
    check_tampered_weights_leave_scene_unchanged(scene, volume, computation.settings["model"])
    check_process_job(scene, volume)
    if data_dir is not None:
        xray = xray_image(data_dir)
        volume = add_volume(scene, xray, "xray")
        check_segment_volume(scene, volume, xray, expected_model="verdiff-xray")
        check_second_run_replaces(scene, volume, other_volume_node=add_volume(scene, xray, "xray copy"))
