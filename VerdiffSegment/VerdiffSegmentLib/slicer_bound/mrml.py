"""Slicer outputs (``.seg.nrrd``, ``.mrb``) written with the real MRML classes of slicer-core.

Why slicer-core and not hand-written NRRD headers: the files are then exactly what Slicer
itself writes and reads (segment metadata, shared labelmaps, scene XML), and the tests
can reload them with the same classes. Nothing here needs Qt or a running Slicer.

slicer-core facts this module relies on (checked with slicer-core 5.13):

* There is no ``slicer.app``/``slicer.mrmlScene``, so ``slicer.util.loadVolume``/``saveNode``
  and even ``slicer.util.getNodesByClass(cls, scene)`` (it ignores ``scene``) do not work.
  Reading and writing go through storage nodes and ``vtkMRMLScene.WriteToMRB``/``ReadFromMRB``.
* ``WriteToMRB``/``ReadFromMRB`` pack and unpack in the scene's cache directory (and
  ``ReadFromMRB`` changes the process working directory while it runs, so it is not
  thread-safe); each call here points the cache at a private temporary directory.
* The volume reader flips a left-handed IJK grid (such as the IPR MR data) to a
  right-handed one by default; the storage nodes made here switch that off so the
  reloaded voxel grid and IJKToRAS are exactly the ones written.
* The application logic, colour logic and module logics hold a reference to the scene,
  so a scene from :func:`new_scene` is only freed after :func:`close_scene`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray, vtkMatrixFromArray
from vtk.util import numpy_support

from ..errors import VerdiffError

BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()

# First colour map found in the scene is used for the uncertainty volume. ColdToHotRainbow
# is a file-based Slicer colour table that slicer-core does not ship; Iron (a heat map) is
# built into vtkMRMLColorLogic, so it exists headless and in every Slicer.
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeIron")

LEVEL_TAG = "VerdiffSegment.Level"  # segment tag: the vertebra's level ("L3"), absent when not decided

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_LOGICS_ATTRIBUTE = "_verdiff_logics"
_CACHE_DIR: str | None = None  # see _process_cache_dir


# ---------------------------------------------------------------------------- scene


def new_scene() -> slicer.vtkMRMLScene:
    """A scene set up like Slicer's: application logic, colours, subject hierarchy,
    volumes and segmentations logics (they register node classes and default colour
    nodes), plus the cache manager and DataIOManager that reading an .mrb needs."""
    scene = slicer.vtkMRMLScene()
    cache_manager = slicer.vtkCacheManager()
    cache_manager.SetRemoteCacheDirectory(_process_cache_dir())
    data_io_manager = slicer.vtkDataIOManager()
    data_io_manager.SetCacheManager(cache_manager)
    scene.SetCacheManager(cache_manager)
    scene.SetDataIOManager(data_io_manager)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    # The built-in vtkMRMLColorLogic adds the default colour nodes (Grey, Labels, Iron, ...);
    # vtkSlicerColorLogic would also look for colour files that slicer-core does not have.
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)

    logics = [app_logic, color_logic]
    for module_name, logic_class in (
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = logic_class()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(module_name, logic)
        logics.append(logic)

    # Kept on the Python wrapper so the logics live as long as the scene is used.
    setattr(scene, _LOGICS_ATTRIBUTE, logics)
    return scene


def close_scene(scene: slicer.vtkMRMLScene) -> None:
    """Detach the logics and clear the scene. Why: logics and scene reference each other,
    so without this a scene (and its image data) stays in memory until the process ends."""
    # Detaching the segmentations logic logs a harmless "Invalid scene given" warning.
    warnings_shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        for logic in reversed(getattr(scene, _LOGICS_ATTRIBUTE, [])):
            logic.SetMRMLScene(None)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings_shown)
    if hasattr(scene, _LOGICS_ATTRIBUTE):
        delattr(scene, _LOGICS_ATTRIBUTE)
    scene.Clear(True)


def nodes_by_class(scene: slicer.vtkMRMLScene, class_name: str) -> list:
    """All nodes of ``class_name`` (subclasses included) in ``scene``.

    Why not ``slicer.util.getNodesByClass``: it ignores its scene argument and needs ``slicer.mrmlScene``."""
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return [node for node in nodes if node.IsA(class_name)]


def _add_to_subject_hierarchy(scene: slicer.vtkMRMLScene, node) -> None:
    """List ``node`` in the Data module's tree. Slicer does this from Qt code, which
    slicer-core lacks; without it Slicer only adds the items when the scene is loaded."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is not None and not hierarchy.GetItemByDataNode(node):
        hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


# --------------------------------------------------------------------------- geometry


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 2D or 3D SimpleITK image.

    SimpleITK is LPS, Slicer RAS: flip the first two rows. A 2D image becomes one slice
    with spacing 1 and its in-plane direction, origin and spacing unchanged."""
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise ValueError(f"a 2D or 3D image is needed, got {dimension}D")
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension))
    spacing = np.ones(3)
    spacing[:dimension] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dimension] = image.GetOrigin()
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing  # scales column k by spacing[k]
    ijk_to_lps[:3, 3] = origin
    return _LPS_TO_RAS @ ijk_to_lps


def _array_3d(image: sitk.Image, what: str) -> np.ndarray:
    """Voxels as a (k, j, i) array; a 2D image becomes a single slice."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} must have one component per pixel, got {image.GetNumberOfComponentsPerPixel()}")
    if image.GetDimension() not in (2, 3):
        raise ValueError(f"{what} must be 2D or 3D, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image)
    return array[np.newaxis] if array.ndim == 2 else array


def _check_same_grid(image: sitk.Image, other: sitk.Image, what: str) -> None:
    """Raise unless ``other`` has the voxel grid of ``image``: a mismatch is a pipeline bug
    (swapped axes, lost geometry) that would otherwise show up as a misplaced overlay."""
    if image.GetSize() != other.GetSize():
        raise ValueError(f"{what} size {other.GetSize()} differs from the image size {image.GetSize()}")
    if not np.allclose(ijk_to_ras_matrix(image), ijk_to_ras_matrix(other), rtol=1e-5, atol=1e-4):
        raise ValueError(f"{what} spacing/origin/direction differ from the image's")


# ---------------------------------------------------------------------------- nodes


def add_scalar_volume(scene: slicer.vtkMRMLScene, image: sitk.Image, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """Add ``image`` as a scalar volume node with its exact geometry and a display node."""
    array = _array_3d(image, name)
    if array.dtype in (np.int64, np.uint64):
        # vtk "long long" volumes do not render in Slicer (slicer.util refuses them).
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name}: 64-bit integer values do not fit in int32")
        array = array.astype(np.int32)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(vtkMatrixFromArray(ijk_to_ras_matrix(image)))
    # Pass a 3D array: slicer.util turns a 2D array into a float64 volume.
    updateVolumeFromArray(node, array)
    node.CreateDefaultDisplayNodes()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetForceRightHandedIJKCoordinateSystem(False)  # keep IJK exactly as given (see module doc)
    storage.SetDefaultWriteFileExtension("nrrd")
    node.SetAndObserveStorageNodeID(storage.GetID())
    _add_to_subject_hierarchy(scene, node)
    return node


def _check_segments(segments: list[dict]) -> None:
    """Catch bad segment lists early with a message naming the culprit."""
    if not segments:
        raise ValueError("at least one segment is needed")
    seen = set()
    for segment in segments:
        label, name, color = segment.get("label"), segment.get("name"), segment.get("color")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label <= 0:
            raise ValueError(f"segment label must be a positive integer, got {label!r}")
        if label in seen:
            raise ValueError(f"segment label {label} is listed twice")
        seen.add(label)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"segment {label} needs a name")
        if color is None or len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
            raise ValueError(f"segment {label} colour must be 3 floats in 0..1, got {color!r}")


def segment_id(label: int) -> str:
    """Stable segment id for a label value, so scripts can find segments by label."""
    return f"label_{int(label)}"


def add_segmentation(
    scene: slicer.vtkMRMLScene,
    labels: sitk.Image,
    segments: list[dict],
    name: str,
    reference_volume_node: slicer.vtkMRMLVolumeNode | None = None,
) -> slicer.vtkMRMLSegmentationNode:
    """Add a segmentation node: one named, coloured segment per entry of ``segments``
    (``{"label": int, "name": str, "color": [r, g, b]}``, optionally ``terminology``: a
    serialised entry for the ``TerminologyEntry`` tag, and ``level``: e.g. "L3", kept in
    the ``VerdiffSegment.Level`` tag), all sharing one binary labelmap (the source
    representation) with the voxels of ``labels``.

    Label values not listed in ``segments`` are left out. The segment id is
    ``label_<label>`` and the label value in the .seg.nrrd is the input label."""
    _check_segments(segments)
    array = _array_3d(labels, name)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: the label map must have an integer pixel type, got {array.dtype}")
    values = np.array([int(s["label"]) for s in segments])
    dtype = np.uint8 if values.max() <= 255 else np.uint16 if values.max() <= 65535 else np.int32
    labelmap = np.where(np.isin(array, values), array, 0).astype(dtype)

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(labelmap.shape[::-1])
    image.AllocateScalars(numpy_support.get_vtk_array_type(labelmap.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = labelmap.ravel()
    image.SetImageToWorldMatrix(vtkMatrixFromArray(ijk_to_ras_matrix(labels)))

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(image),
        )
    for entry in segments:
        segment = slicer.vtkSegment()
        segment.SetName(entry["name"])
        segment.SetNameAutoGenerated(False)  # else Slicer may rename it from the terminology
        segment.SetColor(*(float(c) for c in entry["color"]))
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(int(entry["label"]))
        if entry.get("terminology"):
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), str(entry["terminology"]))
        if entry.get("level"):
            segment.SetTag(LEVEL_TAG, str(entry["level"]))
        segment.AddRepresentation(BINARY_LABELMAP, image)  # same image object: one shared layer
        if not segmentation.AddSegment(segment, segment_id(entry["label"])):
            raise RuntimeError(f"could not add segment {entry['name']!r} to {name!r}")
    _add_to_subject_hierarchy(scene, node)
    return node


def segment_voxel_counts(segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, int]:
    """Voxels per segment id. Why not just sum the segment's labelmap: with a shared
    labelmap slicer-core hands back the whole layer (every label), so count the
    segment's own label value."""
    segmentation = segmentation_node.GetSegmentation()
    counts = {}
    for sid in segmentation.GetSegmentIDs():
        labelmap = segmentation.GetSegment(sid).GetRepresentation(BINARY_LABELMAP)
        if labelmap is None or labelmap.GetPointData().GetScalars() is None:
            counts[sid] = 0
            continue
        voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
        counts[sid] = int(np.count_nonzero(voxels == segmentation.GetSegment(sid).GetLabelValue()))
    return counts


def add_statistics_table(scene: slicer.vtkMRMLScene, statistics: list[dict], name: str, unit_size: float, planar: bool) -> slicer.vtkMRMLTableNode:
    """A locked table node with one row per segment: name, level, what decided it and its posterior, label value, voxels,
    volume (mm3; area in mm2 when ``planar``), height along the spine (mm), mean and max
    uncertainty. ``statistics``: ``pipeline.segment_statistics`` rows (``value``, ``name``,
    ``voxels``, optional ``level``, ``level_source``, ``level_posterior``, ``height_mm``, ``mean_uncertainty``, ``max_uncertainty``);
    ``unit_size``: mm3 (mm2) per voxel. Missing numbers are NaN, a missing level empty."""
    measure, unit = ("Area", "mm2") if planar else ("Volume", "mm3")
    columns = [
        ("Segment", vtk.vtkStringArray, "segment name", ""),
        ("Level", vtk.vtkStringArray, "vertebral level (empty where it could not be decided)", ""),
        ("Level from", vtk.vtkStringArray, "what decided the level: count, level network, level map or labels (empty without a level)", ""),
        ("Level posterior", vtk.vtkDoubleArray, "the level network's chain posterior of the level (NaN where something else named it or no level): "
         "a ranking, not calibrated; held-out X-ray names at 0.9-0.99 were right 78 % of the time, at 0.99 and above 94 %", ""),
        ("Label value", vtk.vtkIntArray, "value of the segment in the label map", ""),
        ("Voxels", vtk.vtkIntArray, "number of voxels of the segment", ""),
        (measure, vtk.vtkDoubleArray, f"{measure.lower()} of the segment", unit),
        ("Height", vtk.vtkDoubleArray, "extent along the spine axis (pixels for pictures without spacing)", "mm"),
        ("Mean uncertainty", vtk.vtkDoubleArray, "mean ensemble standard deviation inside the segment", ""),
        ("Max uncertainty", vtk.vtkDoubleArray, "maximum ensemble standard deviation inside the segment", ""),
    ]
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    arrays = []
    for column, array_class, _description, _unit in columns:
        array = array_class()
        array.SetName(column)
        table.AddColumn(array)
        arrays.append(array)
    number = lambda value: float("nan") if value is None else float(value)  # noqa: E731
    for row in statistics:
        voxels = int(row["voxels"])
        values = [
            str(row["name"]),
            str(row.get("level") or ""),
            str(row.get("level_source") or ""),
            number(row.get("level_posterior")),
            int(row["value"]),
            voxels,
            round(voxels * unit_size, 3),
            number(row.get("height_mm")),
            number(row.get("mean_uncertainty")),
            number(row.get("max_uncertainty")),
        ]
        for array, value in zip(arrays, values):
            array.InsertNextValue(value)
    for column, _array_class, description, column_unit in columns:
        node.SetColumnDescription(column, description)
        if column_unit:
            node.SetColumnUnitLabel(column, column_unit)
    node.SetLocked(True)  # results, not for editing
    node.Modified()
    _add_to_subject_hierarchy(scene, node)
    return node


def show_uncertainty(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLScalarVolumeNode) -> None:
    """The uncertainty volume's display, the same in a written scene and in Slicer
    (``slicer_logic``): a heat colour map (the first of ``UNCERTAINTY_COLOR_NODE_IDS`` in the
    scene) from 0, "the samples agree", which reads dark, to the volume's maximum (0 to 1 for
    a volume of zeros)."""
    display = node.GetScalarVolumeDisplayNode()
    color_id = next((i for i in UNCERTAINTY_COLOR_NODE_IDS if scene.GetNodeByID(i) is not None), None)
    if color_id is None:
        raise RuntimeError(f"none of the colour maps {UNCERTAINTY_COLOR_NODE_IDS} is in the scene")
    display.SetAndObserveColorNodeID(color_id)
    values = arrayFromVolume(node)
    high = float(values.max()) if values.size else 0.0
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, high if high > 0 else 1.0)


# ---------------------------------------------------------------------------- files


def write_segmentation_nrrd(
    scene_or_none: slicer.vtkMRMLScene | None,
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    path: str | Path,
) -> None:
    """Write ``segmentation_node`` as a Slicer .seg.nrrd (atomically, through a temporary file).

    With a scene, the storage node is added to it and kept on the segmentation node, as
    Slicer's "Save" does, so the scene records where the file is; with None the scene
    is left untouched."""
    path = Path(path)
    if not path.name.endswith(".nrrd"):
        raise ValueError(f"a .seg.nrrd path is needed, got {path}")
    if not path.parent.is_dir():
        raise VerdiffError(f"output folder does not exist: {path.parent}")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    with tempfile.TemporaryDirectory(prefix="verdiff-seg-") as tmp:
        tmp_file = Path(tmp) / "segmentation.seg.nrrd"
        storage.SetFileName(str(tmp_file))
        if not storage.WriteData(segmentation_node) or not tmp_file.is_file():
            raise VerdiffError(f"could not write {path.name}: {_error_text(storage.GetUserMessages(), 'storage node failed')}")
        _atomic_copy(tmp_file, path)
    if scene_or_none is not None:
        storage.SetFileName(str(path))
        scene_or_none.AddNode(storage)
        segmentation_node.SetAndObserveStorageNodeID(storage.GetID())


def write_scene_bundle(scene: slicer.vtkMRMLScene, path_mrb: str | Path) -> None:
    """Write the whole scene as a Slicer .mrb (volumes as .nrrd, segmentations as .seg.nrrd).

    Packing happens in a private temporary directory; the file appears atomically."""
    path = Path(path_mrb)
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"an .mrb path is needed, got {path}")
    if not path.parent.is_dir():
        raise VerdiffError(f"output folder does not exist: {path.parent}")
    empty = [node.GetName() for node in nodes_by_class(scene, "vtkMRMLVolumeNode") if not _has_data(node)]
    if empty:
        # Slicer would silently skip them and the bundle would not reload.
        raise ValueError(f"volume nodes without image data: {', '.join(empty)}")
    scene.RemoveUnreferencedDisplayNodes()
    scene.RemoveUnreferencedStorageNodes()
    messages = slicer.vtkMRMLMessageCollection()
    with tempfile.TemporaryDirectory(prefix="verdiff-mrb-") as tmp, _scene_cache_dir(scene, tmp):
        # Packed under the final name: Slicer names the folder inside the .mrb after it.
        packed = Path(tmp) / path.name
        if not scene.WriteToMRB(str(packed), None, messages) or _has_errors(messages) or not packed.is_file():
            raise VerdiffError(f"could not write {path.name}: {_error_text(messages, 'WriteToMRB failed')}")
        _atomic_copy(packed, path)


def read_scene_bundle(path_mrb: str | Path) -> slicer.vtkMRMLScene:
    """Read an .mrb into a fresh scene from :func:`new_scene` (call :func:`close_scene` when done)."""
    path = Path(path_mrb)
    if not path.is_file():
        raise VerdiffError(f"scene file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise VerdiffError(f"{path.name} is not a Slicer scene bundle (.mrb is a zip file)")
    scene = new_scene()
    messages = slicer.vtkMRMLMessageCollection()
    try:
        with tempfile.TemporaryDirectory(prefix="verdiff-mrb-") as tmp, _scene_cache_dir(scene, tmp):
            ok = scene.ReadFromMRB(str(path.resolve()), False, messages)
        failed = [
            node.GetName()
            for node in nodes_by_class(scene, "vtkMRMLStorableNode")
            if node.GetStorageNode() is not None and not _has_data(node)
        ]
        if not ok or _has_errors(messages) or failed:
            details = _error_text(messages, "no data for " + ", ".join(failed or ["the scene"]))
            raise VerdiffError(f"could not read {path.name}: {details}")
    except BaseException:
        close_scene(scene)
        raise
    return scene


def write_outputs(
    image: sitk.Image,
    labels: sitk.Image,
    uncertainty: sitk.Image,
    segments: list[dict],
    stem: str,
    outdir: str | Path,
    scene_bundle: bool = True,
    statistics: list[dict] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.seg.nrrd`` and, unless ``scene_bundle`` is False, ``<stem>.mrb`` (input
    volume, segmentation, uncertainty and, given ``statistics`` (``SegmentationResult.segments``),
    the per-vertebra table ``<stem> vertebra statistics``) into ``outdir``; the CLI's one call.
    ``labels`` and ``uncertainty`` must be on the image's voxel grid. Returns
    ``{"segmentation": path, "scene": path}`` (without "scene" when no bundle was written)."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"stem must be a plain file name, got {stem!r}")
    _check_same_grid(image, labels, "label map")
    _check_same_grid(image, uncertainty, "uncertainty")
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VerdiffError(f"cannot create output folder {outdir}: {error.strerror}") from None
    paths = {"segmentation": outdir / f"{stem}.seg.nrrd", **({"scene": outdir / f"{stem}.mrb"} if scene_bundle else {})}

    scene = new_scene()
    try:
        volume = add_scalar_volume(scene, image, stem)
        segmentation = add_segmentation(scene, labels, segments, f"{stem} segmentation", volume)
        uncertainty_node = add_scalar_volume(scene, sitk.Cast(uncertainty, sitk.sitkFloat32), f"{stem} uncertainty")
        show_uncertainty(scene, uncertainty_node)
        if statistics is not None:
            planar = image.GetDimension() == 2 or 1 in image.GetSize()
            spacing = [s for s, n in zip(image.GetSpacing(), image.GetSize()) if n != 1 or not planar]
            add_statistics_table(scene, statistics, f"{stem} vertebra statistics", float(np.prod(spacing[:2] if planar else spacing)), planar)
        write_segmentation_nrrd(None, segmentation, paths["segmentation"])
        if scene_bundle:
            write_scene_bundle(scene, paths["scene"])
    finally:
        close_scene(scene)
    return paths


# --------------------------------------------------------------------------- helpers


def _process_cache_dir() -> str:
    """One private cache folder per process (removed at exit), never the working directory."""
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.mkdtemp(prefix="verdiff-slicer-cache-")
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


@contextmanager
def _scene_cache_dir(scene: slicer.vtkMRMLScene, directory: str):
    """Point the scene's cache (where .mrb files are packed/unpacked) at ``directory``."""
    cache_manager = scene.GetCacheManager()
    previous = cache_manager.GetRemoteCacheDirectory()
    cache_manager.SetRemoteCacheDirectory(directory)
    try:
        yield
    finally:
        cache_manager.SetRemoteCacheDirectory(previous)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy to a hidden temporary file beside ``target``, then rename it over ``target``,
    so readers never see a half-written file and a failure leaves nothing behind."""
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, partial)
        os.chmod(partial, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get ordinary permissions
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _has_errors(messages: slicer.vtkMRMLMessageCollection) -> bool:
    return messages.GetNumberOfMessagesOfType(vtk.vtkCommand.ErrorEvent) > 0


def _error_text(messages: slicer.vtkMRMLMessageCollection, fallback: str) -> str:
    """The error messages on one line each (without VTK's object dumps), for VerdiffError."""
    errors = [
        messages.GetNthMessageText(i).strip().splitlines()[0].split(" [vtk")[0]
        for i in range(messages.GetNumberOfMessages())
        if messages.GetNthMessageType(i) == vtk.vtkCommand.ErrorEvent and messages.GetNthMessageText(i).strip()
    ]
    return "; ".join(errors) or fallback


def _has_data(node) -> bool:
    """Whether a volume node has voxels: a volume saved without them is skipped by Slicer's
    writer without an error, and its reload does not report one either."""
    if node.IsA("vtkMRMLVolumeNode"):
        return node.GetImageData() is not None and node.GetImageData().GetNumberOfPoints() > 0
    return True
