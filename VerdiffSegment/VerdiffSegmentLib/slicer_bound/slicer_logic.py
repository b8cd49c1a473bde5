"""The Slicer module's logic without Qt: a volume node in, results in the MRML scene.

``VerdiffSegment.py`` (the Slicer entry point) only draws the GUI and runs the
``verdiff segment`` process with ``qt.QProcess``; everything else happens here, on a
``vtkMRMLScene`` passed in explicitly, so the same code runs inside Slicer and headless
under slicer-core (where the tests run it, with real processes).

A run has three steps, and the scene is touched once, at the end:

1. :class:`Job` (main thread): checks the volume node, writes it into a private temporary
   folder (:func:`write_input`: through a storage node, as Slicer saves it) and builds the
   command (``process.segment_command``) from a ``SegmentSettings``;
2. the process runs (``qt.QProcess`` in the GUI, ``process.run`` headless: :func:`compute`);
   its progress is read from its ``--progress json`` lines (``process.ProcessOutput``).
   It never touches the scene: a cancel (terminate, then kill) or an error there leaves the
   scene as it was. ``Job.finish`` reads its outputs back (:func:`load_result`: label map,
   uncertainty, report) and removes the temporary folder;
3. :func:`apply_result` (main thread): builds every output node, and only when all of
   them exist removes the previous outputs of the same input. If building fails half
   way, the nodes (and subject-hierarchy items) created so far are removed again.

Outputs, found again through node attributes and a node reference to the input (never
by name, so renaming them in Slicer does not break re-runs):

- a segmentation node, one segment per vertebra (``levels``: named by level where it can
  be decided), with a DICOM/SNOMED CT terminology entry in the segment tag
  ``TerminologyEntry`` (Slicer's serialised terminology format) and the level in
  ``VerdiffSegment.Level``;
- an uncertainty scalar volume on the input's voxel grid with a heat colour map;
- a table node with one row per vertebra: name, level, label value, voxels, volume
  (area for a single-slice image), height along the spine, mean and max uncertainty
  (``mrml.add_statistics_table``); an X-ray's Cobb angles are kept as its attribute
  ``VerdiffSegment.cobb_angles_deg`` (JSON), and the vertebrae a card leaves out (named beyond
  its levels, ``levels.py`` step 4) as ``VerdiffSegment.vertebrae_left_out`` (JSON), and
  the end vertebrae placed for the angles where the segmentation stops short
  (``cobb.estimate_missing_ends``) as ``VerdiffSegment.cobb_estimated_vertebrae`` (JSON);

all placed under the input's parent in the subject hierarchy (its study, normally) and
under the input's parent transform.

Torch is imported lazily (through ``models``), and only for the GUI's model and device
descriptions: Slicer can load the module and offer to install PyTorch when it is missing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import mrml
from ..errors import Cancelled, VerdiffError
from ..io import check_image
from ..process import ProcessOutput, segment_command
from ..process import run as run_process
from ..settings import SegmentSettings

# ------------------------------------------------------------------ node bookkeeping

ROLE_ATTRIBUTE = "VerdiffSegment.Role"
SETTINGS_ATTRIBUTE = "VerdiffSegment.Settings"
INPUT_REFERENCE_ROLE = "verdiffSegmentInput"
ROLE_SEGMENTATION = "segmentation"
ROLE_UNCERTAINTY = "uncertainty"
ROLE_STATISTICS = "statistics"
ROLES = (ROLE_SEGMENTATION, ROLE_UNCERTAINTY, ROLE_STATISTICS)

# Heat maps, first one present in the scene wins (``mrml.show_uncertainty``, also for the written scene):
# ColdToHotRainbow is a file-based table of full Slicer; Iron is built in everywhere.
UNCERTAINTY_COLOR_NODE_IDS = mrml.UNCERTAINTY_COLOR_NODE_IDS

# ---------------------------------------------------------------------- terminology
# The codes and their serialisation live in ``terminology`` (headless, shared with the
# JSON summary); re-exported here for callers of this module.
from ..terminology import (  # noqa: E402,F401
    ANATOMIC_CONTEXT,
    ANATOMICAL_STRUCTURE,
    EMPTY_CODE,
    SPINE_REGIONS,
    TERMINOLOGY_CONTEXT,
    VERTEBRA,
    VERTEBRAL_BODY,
    VERTEBRAL_COLUMN,
    parse_terminology,
    serialize_terminology,
    terminology_for_label,
)


# --------------------------------------------------------------------------- input


def _check_volume_node(volume_node):
    """The node's image data; ``VerdiffError`` unless it is a scalar volume with voxels."""
    if volume_node is None:
        raise VerdiffError("no input volume selected")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VerdiffError(f"{volume_node.GetName()} is not a scalar volume (a {volume_node.GetClassName()})")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0 or image_data.GetPointData().GetScalars() is None:
        raise VerdiffError(f"volume {volume_node.GetName()} has no voxels")
    return image_data


def read_input(volume_node) -> sitk.Image:
    """The voxels and geometry of a scalar volume node as a SimpleITK image (LPS).

    Exact: the node's own IJK grid and values (copied), spacing from the column norms of
    its IJK-to-RAS matrix, direction from the normalised columns, both with the first
    two rows flipped (RAS -> LPS). A parent transform is not applied: the outputs are
    placed under the same transform instead. An RGB(A) volume (a colour JPG loaded in
    Slicer) becomes grey by luminance. Raises ``VerdiffError`` for anything else, and
    for an image the pipeline would refuse (constant, NaN, too small), naming the node."""
    image_data = _check_volume_node(volume_node)
    scalars = image_data.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    shape = tuple(reversed(image_data.GetDimensions()))  # (k, j, i)
    array = numpy_support.vtk_to_numpy(scalars).reshape(shape + ((components,) if components > 1 else ()))
    if components in (3, 4):
        rgb = array[..., :3].astype(np.float32)
        array = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    elif components != 1:
        raise VerdiffError(f"volume {volume_node.GetName()} has {components} components per voxel; a grey-level volume is needed")
    image = sitk.GetImageFromArray(np.array(array, copy=True))

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3, :]
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    if not np.all(spacing > 0):
        raise VerdiffError(f"volume {volume_node.GetName()} has a zero spacing")
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (ijk_to_lps[:, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in ijk_to_lps[:, 3]])
    check_image(image, volume_node.GetName())  # constant, NaN, too small: one clear message naming the volume
    return image


# ------------------------------------------------------------------------- devices


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def device_info() -> dict:
    """What PyTorch offers: ``{"torch": version or None, "cuda": bool, "gpu": name or None}``."""
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda": False, "gpu": None}
    cuda = bool(torch.cuda.is_available())
    return {"torch": torch.__version__, "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None}


def choose_device(choice: str) -> tuple[str, str | None]:
    """``auto``/``cpu``/``cuda`` -> (device to use, warning or None). CUDA that is asked
    for but missing falls back to the CPU with a warning instead of failing."""
    choice = (choice or "auto").lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise VerdiffError(f"unknown device {choice!r}; use auto, cpu or cuda")
    info = device_info()
    if choice == "cpu":
        return "cpu", None
    if info["cuda"]:
        return "cuda", None
    reason = "PyTorch sees no CUDA GPU" + (" (a CPU-only build of PyTorch is installed)" if info["torch"] and "+cpu" in info["torch"] else "")
    if choice == "cuda":
        return "cpu", f"CUDA was selected but {reason}: running on the CPU, which is much slower."
    return "cpu", f"{reason}: running on the CPU, which is much slower."


# -------------------------------------------------------------------------- models


def list_models() -> list:
    """The bundled model cards (empty when PyTorch is not installed yet)."""
    try:
        from ..models import list_cards
    except ImportError:
        return []
    return list_cards()


def resolve_card(image: sitk.Image, model: str = "auto"):
    """The card ``model`` names, or for ``auto`` the one for the image's modality."""
    from ..pipeline import choose_card

    return choose_card(image, model or "auto")


def samples(card) -> bool:
    """Whether a model samples (steps and ensemble size apply): False for deterministic
    families such as the U-Net baseline, and for cards that cannot be resolved."""
    try:
        return card.family.scheduler is not None
    except Exception:  # noqa: BLE001 - an unknown family is reported elsewhere, here it only greys widgets
        return False


def card_for_volume(volume_node, model: str = "auto"):
    """The card a run on ``volume_node`` would use (for the GUI's model description);
    None while it cannot be told (no input yet for ``auto``)."""
    if model and model != "auto":
        from ..models import get_card

        return get_card(model)
    if volume_node is None:
        return None
    return resolve_card(read_input(volume_node), "auto")


def card_title(card) -> str:
    """The model selector's entry: name, modality and what it segments."""
    return f"{card.name} ({card.modality}): {', '.join(label['name'] for label in card.labels)}"


def card_info(card) -> dict:
    """What the GUI's model line and spin boxes show of ``card``: version, family, modality,
    labels, whether it samples, its default steps and ensemble and their accepted ranges
    (``(0, 0)`` steps for a deterministic family)."""
    sampled = samples(card)
    return {
        "version": card.version,
        "family": card.family_name,
        "modality": card.modality,
        "labels": "; ".join(f"{label['name']}: {label.get('covers', '')}" for label in card.labels),
        "samples": sampled,
        "steps": card.default_steps,
        "ensemble": card.default_ensemble,
        "steps_range": card.steps_range() if sampled else (0, 0),
        "ensemble_range": card.ensemble_range(),
    }


class CardLookup:
    """The card a run on a volume node would use (:func:`card_for_volume`), remembered per
    node, modification time of its voxels and model (``auto`` reads the image): None while it
    cannot be told, a ``VerdiffError`` (returned, for the GUI to show) when it cannot be resolved."""

    def __init__(self):
        self._cards = {}

    def __call__(self, volume_node, model: str):
        image_data = volume_node.GetImageData() if volume_node is not None else None
        key = (volume_node.GetID() if volume_node is not None else None, image_data.GetMTime() if image_data is not None else None, model)
        if key not in self._cards:
            try:
                self._cards[key] = card_for_volume(volume_node, model)
            except Exception as error:  # noqa: BLE001 - shown in the model line, never raised from an observer
                self._cards[key] = error if isinstance(error, VerdiffError) else VerdiffError(f"{type(error).__name__}: {error}")
        return self._cards[key]


# ---------------------------------------------------------------------- the process


def write_input(volume_node, folder: str | Path) -> Path:
    """Write ``volume_node`` into ``folder`` as NRRD for the process; returns the path.

    A grey-level volume goes through a volume storage node, as Slicer saves it (its own
    voxels and IJK-to-RAS, no resampling; a parent transform is not applied: the outputs
    are placed under the same transform instead). An RGB(A) volume (a colour JPG loaded in
    Slicer) is written grey by luminance (:func:`read_input`). The file is named after the
    node, so the process's messages and outputs carry its name. Raises ``VerdiffError``
    for a missing node, a label map, a volume without voxels."""
    image_data = _check_volume_node(volume_node)
    stem = "".join(c if c.isalnum() or c in "-_. " else "_" for c in volume_node.GetName()).strip(" .") or "input"
    path = Path(folder) / f"{stem}.nrrd"
    if image_data.GetPointData().GetScalars().GetNumberOfComponents() != 1:
        sitk.WriteImage(read_input(volume_node), str(path))
        return path
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # read once, at once: compressing would only cost time
    if not storage.WriteData(volume_node) or not path.is_file():
        raise VerdiffError(f"could not write volume {volume_node.GetName()} for the segmentation: {storage.GetUserMessages().GetAllMessagesAsString().strip() or 'storage node failed'}")
    return path


# The report's measurements (``pipeline.SegmentationResult.measurements``, spread at the
# top of the CLI's report), kept as attributes of the statistics table.
MEASUREMENT_KEYS = ("cobb_angles_deg", "vertebrae_left_out", "cobb_estimated_vertebrae")
# Report entries that are not the run's settings (the rest is kept in SETTINGS_ATTRIBUTE).
NOT_SETTINGS = ("input", "outputs", "segments", "timings_seconds", "warnings", "output_format", *MEASUREMENT_KEYS)


def cobb_angle_texts(angles: dict) -> dict:
    """The three Cobb angles as the module's status line shows them, keyed PT, MT, TL: degrees,
    or "n/d" where the segmentation could not determine one (``cobb.angle_text``)."""
    from ..cobb import NAMES, angle_text  # scipy: imported once a run has reported angles

    return {name: angle_text(angles.get(name)) for name in NAMES}


@dataclass
class Computation:
    """A finished run's outputs read back from the process (:func:`load_result`): data only,
    no MRML objects; what :func:`apply_result` puts into the scene."""

    labels: sitk.Image  # on the input node's voxel grid
    uncertainty: sitk.Image
    segments: list[dict]  # per segment: value, name, covers, color, level, voxels, size, uncertainty
    settings: dict  # model, version, family, steps, ensemble, device, seed, reliability...
    measurements: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def load_result(report: dict) -> Computation:
    """The outputs of a finished ``verdiff segment`` (its JSON report and the files it lists)."""
    try:
        labels = sitk.ReadImage(report["outputs"]["labels"])
        uncertainty = sitk.ReadImage(report["outputs"]["uncertainty"])
    except (KeyError, RuntimeError) as error:
        raise VerdiffError(f"the segmentation process left no readable outputs ({type(error).__name__}: {error})") from None
    return Computation(
        labels=labels,
        uncertainty=uncertainty,
        segments=report["segments"],
        settings={key: value for key, value in report.items() if key not in NOT_SETTINGS},
        measurements={key: report[key] for key in MEASUREMENT_KEYS if key in report},
        warnings=list(report.get("warnings", [])),
        timings=dict(report.get("timings_seconds", {})),
    )


class Job:
    """One segmentation of a volume node as a process, without Qt: what the GUI drives with
    ``qt.QProcess`` and :func:`compute` with ``process.run``.

    Made on the main thread: it checks the node, writes it into a private temporary folder
    and builds ``command``. The runner feeds the process's stderr to ``output``
    (``process.ProcessOutput``), then calls :meth:`finish` with the exit status and stdout
    (or :meth:`close` after a cancel); both remove the folder."""

    def __init__(self, volume_node, settings: SegmentSettings):
        self.volume_node = volume_node
        self.settings = settings
        _check_volume_node(volume_node)
        self.folder = Path(tempfile.mkdtemp(prefix="verdiff-slicer-"))
        try:
            input_path = write_input(volume_node, self.folder)
        except BaseException:
            self.close()
            raise
        self.command = segment_command(settings, input_path, self.folder / "outputs")
        self.output = ProcessOutput()

    def finish(self, exit_code: int | None, stdout: str) -> Computation:
        """The computation of the ended process (``exit_code`` None: it crashed), or ``VerdiffError``."""
        try:
            return load_result(self.output.result(exit_code, stdout))
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def compute(volume_node, settings: SegmentSettings = SegmentSettings(), progress: ProgressCallback | None = None, cancel: Callable[[], bool] | None = None) -> Computation:
    """Segment ``volume_node`` in a ``verdiff segment`` process, headless (``process.run``);
    the scene is not touched. ``progress(stage, done, total)`` gets the stages of
    ``progress.STAGES``; ``cancel()`` returning True ends the process and raises ``Cancelled``."""
    if cancel is not None and cancel():
        raise Cancelled()
    job = Job(volume_node, settings)
    try:
        report = run_process(job.command, progress, cancel)
    except BaseException:
        job.close()
        raise
    return job.finish(0, json.dumps(report))


ProgressCallback = Callable[[str, int, int], None]


# ---------------------------------------------------------------------- the scene


@dataclass
class Outputs:
    segmentation: object
    uncertainty: object
    statistics: object

    def nodes(self) -> list:
        return [self.segmentation, self.uncertainty, self.statistics]


def find_outputs(scene, volume_node) -> dict[str, list]:
    """The output nodes of earlier runs on ``volume_node``: ``{role: [nodes]}``, found by
    the role attribute and the node reference to the input, not by name."""
    found = {role: [] for role in ROLES}
    if volume_node is None:
        return found
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        role = node.GetAttribute(ROLE_ATTRIBUTE)
        if role in found and node.GetNodeReferenceID(INPUT_REFERENCE_ROLE) == volume_node.GetID():
            found[role].append(node)
    return found


def run(scene, volume_node, settings: SegmentSettings = SegmentSettings(), progress: ProgressCallback | None = None, cancel: Callable[[], bool] | None = None) -> Outputs:
    """:func:`compute` and :func:`apply_result` in one call (scripts, tests). A cancel or
    an error leaves ``scene`` as it was."""
    computation = compute(volume_node, settings, progress, cancel)
    if cancel is not None and cancel():
        raise Cancelled()
    return apply_result(scene, volume_node, computation)


def apply_result(scene, volume_node, computation: Computation) -> Outputs:
    """Put a computation's results into ``scene`` in one go (main thread only).

    All new nodes are built first; the previous outputs of ``volume_node`` are removed
    only after that succeeded. On any failure while building, every node and
    subject-hierarchy item created here is removed again, so the scene is as before."""
    if volume_node is None or volume_node.GetScene() is not scene or scene.GetNodeByID(volume_node.GetID()) is not volume_node:
        raise VerdiffError("the input volume is no longer in the scene; nothing was added")
    clock = time.perf_counter()
    dims = tuple(reversed(volume_node.GetImageData().GetDimensions()))  # (k, j, i)
    labels = np.asarray(sitk.GetArrayViewFromImage(computation.labels))
    uncertainty = np.asarray(sitk.GetArrayViewFromImage(computation.uncertainty), dtype=np.float32)
    if labels.ndim == 2:  # a 2D result of a single-slice input
        labels, uncertainty = labels[np.newaxis], uncertainty[np.newaxis]
    if labels.shape != dims or uncertainty.shape != dims:
        raise VerdiffError(f"results of shape {labels.shape} do not match the input volume {dims}; nothing was added")

    previous = find_outputs(scene, volume_node)
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items_before = _hierarchy_items(hierarchy)
    settings_json = json.dumps(computation.settings, sort_keys=True)
    base = volume_node.GetName()
    try:
        uncertainty_node = _add_uncertainty_volume(scene, volume_node, uncertainty, f"{base} uncertainty")
        segmentation_node = _add_segmentation(scene, volume_node, computation, f"{base} vertebrae")
        statistics_node = _add_statistics_table(scene, volume_node, computation, f"{base} vertebra statistics")
        for key, value in computation.measurements.items():  # e.g. the Cobb angles of an X-ray
            statistics_node.SetAttribute(f"VerdiffSegment.{key}", json.dumps(value))
        outputs = Outputs(segmentation_node, uncertainty_node, statistics_node)
        parent_item = _parent_item(hierarchy, volume_node)
        for role, node in zip(ROLES, outputs.nodes()):
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            node.SetAttribute(SETTINGS_ATTRIBUTE, settings_json)
            node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, volume_node.GetID())
            if node.IsA("vtkMRMLTransformableNode"):
                node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            _place_in_hierarchy(hierarchy, node, parent_item)
    except BaseException:
        _roll_back(scene, hierarchy, before, items_before)
        raise
    for node in (node for nodes in previous.values() for node in nodes):
        remove_output_node(scene, node)
    computation.timings["scene"] = time.perf_counter() - clock
    return outputs


def remove_outputs(scene, volume_node) -> int:
    """Remove every output of earlier runs on ``volume_node``; returns how many nodes."""
    nodes = [node for found in find_outputs(scene, volume_node).values() for node in found]
    for node in nodes:
        remove_output_node(scene, node)
    return len(nodes)


def remove_output_node(scene, node) -> None:
    """Remove ``node`` with its subject-hierarchy item and the display and storage nodes
    that only it uses (``vtkMRMLScene.RemoveNode`` alone leaves those behind)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    dependents = []
    for method, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"), ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            dependents += [getattr(node, method)(i) for i in range(getattr(node, count)())]
    if hierarchy is not None:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.RemoveItem(item, False, False)
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and scene.GetNodeByID(dependent.GetID()) is dependent and not _is_referenced(scene, dependent):
            scene.RemoveNode(dependent)


# ------------------------------------------------------------------ node builders


def _add_uncertainty_volume(scene, volume_node, array: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    node.CreateDefaultDisplayNodes()
    mrml.show_uncertainty(scene, node)
    node.SetAttribute("VerdiffSegment.Description", UNCERTAINTY_DESCRIPTION)
    return node


UNCERTAINTY_DESCRIPTION = (
    "Per-voxel standard deviation of the vertebra probability across the diffusion ensemble "
    "(0 = all samples agree; 0.5 = maximal disagreement). 0 also where the model's prior saw no spine."
)


def _add_segmentation(scene, volume_node, result: Computation, name: str):
    """One segment per entry of ``result.segments`` (per vertebra), with its terminology
    and level tags."""
    segments = []
    for info in result.segments:
        segments.append(
            {
                "label": int(info["value"]),
                "name": info["name"],
                "color": [float(c) for c in info["color"]],
                "terminology": info.get("terminology") or terminology_for_label(info),
                "level": info.get("level"),
            }
        )
    node = mrml.add_segmentation(scene, result.labels, segments, name, reference_volume_node=volume_node)
    node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
    segmentation = node.GetSegmentation()
    for info in result.segments:
        segmentation.GetSegment(mrml.segment_id(info["value"])).SetTag("VerdiffSegment.Covers", str(info.get("covers", "")))
    display = node.GetDisplayNode()
    if display is not None:
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
        display.SetOpacity2DFill(0.3)
    return node


def _add_statistics_table(scene, volume_node, result, name: str):
    """The per-vertebra table (``mrml.add_statistics_table``), areas for a single-slice input."""
    spacing = volume_node.GetSpacing()
    dims = volume_node.GetImageData().GetDimensions()
    single_slice = 1 in dims
    if single_slice:
        in_plane = [s for s, n in zip(spacing, dims) if n != 1] or list(spacing[:2])
        unit_size = float(np.prod(in_plane[:2]))
    else:
        unit_size = float(np.prod(spacing))
    return mrml.add_statistics_table(scene, result.segments, name, unit_size, single_slice)


# -------------------------------------------------------------- subject hierarchy


def _hierarchy_items(hierarchy) -> set:
    if hierarchy is None:
        return set()
    ids = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), ids, True)
    return {ids.GetId(i) for i in range(ids.GetNumberOfIds())}


def _parent_item(hierarchy, volume_node) -> int:
    """The input's parent in the subject hierarchy (its study when loaded from DICOM or
    placed in one), else the scene."""
    if hierarchy is None:
        return 0
    item = hierarchy.GetItemByDataNode(volume_node)
    parent = hierarchy.GetItemParent(item) if item else 0
    return parent or hierarchy.GetSceneItemID()


def _place_in_hierarchy(hierarchy, node, parent_item) -> None:
    if hierarchy is None:
        return
    item = hierarchy.GetItemByDataNode(node)  # full Slicer creates it when the node is added
    if item:
        hierarchy.SetItemParent(item, parent_item)
    else:
        hierarchy.CreateItem(parent_item, node)


def _roll_back(scene, hierarchy, nodes_before: set, items_before: set) -> None:
    """Remove every node and subject-hierarchy item that is not in the 'before' sets."""
    if hierarchy is not None:
        for item in sorted(_hierarchy_items(hierarchy) - items_before, reverse=True):
            if item in _hierarchy_items(hierarchy):
                hierarchy.RemoveItem(item, False, False)
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in reversed([node for node in added if node.GetID() not in nodes_before]):
        if scene.GetNodeByID(node.GetID()) is node:
            scene.RemoveNode(node)


def _is_referenced(scene, node) -> bool:
    """Whether any node in ``scene`` still references ``node``."""
    node_id = node.GetID()
    for index in range(scene.GetNumberOfNodeReferences()):
        if scene.GetNthReferencedID(index) == node_id:
            referencing = scene.GetNthReferencingNode(index)
            if referencing is not None and referencing is not node and scene.GetNodeByID(referencing.GetID()) is referencing:
                return True
    return False
