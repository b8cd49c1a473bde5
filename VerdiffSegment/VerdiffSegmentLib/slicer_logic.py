"""The Slicer module's logic without Qt: a volume node in, results in the MRML scene.

``VerdiffSegment.py`` (the Slicer entry point) only draws the GUI and runs
:func:`compute` in a worker thread; everything else happens here, on a
``vtkMRMLScene`` passed in explicitly, so the same code runs inside Slicer and headless
under slicer-core (where the tests run it).

The work is split in three steps so that only the middle one may run off the main
thread and so that the scene is touched once, at the end:

1. :func:`read_input` (main thread): the volume node's voxels and geometry as a
   SimpleITK image, exactly (RAS -> LPS, the node's own IJK grid, no resampling);
2. :func:`compute` (any thread): :func:`pipeline.segment` with progress and cancel
   callbacks; it never touches the scene, so a cancel or an error there leaves the scene
   as it was;
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
  ``VerdiffSegment.cobb_angles_deg`` (JSON);

all placed under the input's parent in the subject hierarchy (its study, normally) and
under the input's parent transform.

Torch is imported lazily (through ``pipeline``/``models``), so that Slicer can load the
module and offer to install PyTorch when it is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import mrml
from .errors import VerdiffError
from .io import check_image

# ------------------------------------------------------------------ node bookkeeping

ROLE_ATTRIBUTE = "VerdiffSegment.Role"
SETTINGS_ATTRIBUTE = "VerdiffSegment.Settings"
INPUT_REFERENCE_ROLE = "verdiffSegmentInput"
ROLE_SEGMENTATION = "segmentation"
ROLE_UNCERTAINTY = "uncertainty"
ROLE_STATISTICS = "statistics"
ROLES = (ROLE_SEGMENTATION, ROLE_UNCERTAINTY, ROLE_STATISTICS)

# Heat maps, first one present in the scene wins (as in mrml.write_outputs):
# ColdToHotRainbow is a file-based table of full Slicer; Iron is built in everywhere.
UNCERTAINTY_COLOR_NODE_IDS = mrml.UNCERTAINTY_COLOR_NODE_IDS

# ---------------------------------------------------------------------- terminology
# The codes and their serialisation live in ``terminology`` (headless, shared with the
# JSON summary); re-exported here for callers of this module.
from .terminology import (  # noqa: E402,F401
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


def read_input(volume_node) -> sitk.Image:
    """The voxels and geometry of a scalar volume node as a SimpleITK image (LPS).

    Exact: the node's own IJK grid and values (copied), spacing from the column norms of
    its IJK-to-RAS matrix, direction from the normalised columns, both with the first
    two rows flipped (RAS -> LPS). A parent transform is not applied: the outputs are
    placed under the same transform instead. An RGB(A) volume (a colour JPG loaded in
    Slicer) becomes grey by luminance. Raises ``VerdiffError`` for anything else, and
    for an image the pipeline would refuse (constant, NaN, too small), naming the node."""
    if volume_node is None:
        raise VerdiffError("no input volume selected")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VerdiffError(f"{volume_node.GetName()} is not a scalar volume (a {volume_node.GetClassName()})")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0 or image_data.GetPointData().GetScalars() is None:
        raise VerdiffError(f"volume {volume_node.GetName()} has no voxels")
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
        from .models import list_cards
    except ImportError:
        return []
    return list_cards()


def resolve_card(image: sitk.Image, model: str = "auto"):
    """The card ``model`` names, or for ``auto`` the one for the image's modality."""
    from .pipeline import choose_card

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
        from .models import get_card

        return get_card(model)
    if volume_node is None:
        return None
    return resolve_card(read_input(volume_node), "auto")


# ------------------------------------------------------------------------- compute


@dataclass
class Computation:
    """What :func:`compute` hands to :func:`apply_result`: no MRML objects, only data."""

    result: object  # pipeline.SegmentationResult
    card: object  # models.ModelCard
    device_warning: str | None = None
    timings: dict = field(default_factory=dict)


ProgressCallback = Callable[[str, int, int], None]


def compute(
    image: sitk.Image,
    model: str = "auto",
    steps: int | None = None,
    ensemble: int | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Computation:
    """Segment ``image`` (from :func:`read_input`); safe to call off the main thread.

    ``progress(stage, done, total)`` gets the stages "loading" (model and image checks),
    "inference" (``done``/``total`` slices) and "finishing"; ``cancel()`` returning True
    stops the work with ``pipeline.Cancelled``."""
    from .pipeline import Cancelled, segment

    def report(stage, done=0, total=0):
        if progress is not None:
            progress(stage, done, total)

    report("loading")
    if cancel is not None and cancel():
        raise Cancelled()
    card = resolve_card(image, model)
    torch_device, warning = choose_device(device)
    result = segment(
        image,
        card,
        steps=steps,
        ensemble=ensemble,
        device=torch_device,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        cancel=cancel,
    )
    if cancel is not None and cancel():
        raise Cancelled()
    report("finishing")
    return Computation(result=result, card=card, device_warning=warning, timings=dict(result.timings))


class BackgroundJob:
    """:func:`compute` in a Python thread, for a GUI that polls it (Qt-free).

    The main thread reads the input (:func:`read_input`), starts the job, polls
    ``progress`` and ``finished`` (plain attributes, written by the worker), may call
    :meth:`cancel`, and once ``finished`` applies ``computation`` to the scene itself:
    the worker never touches MRML. ``outcome`` is then "done", "cancelled" or "failed"
    (with ``error`` and ``error_traceback``)."""

    def __init__(self, image: sitk.Image, **settings):
        import threading

        self._image = image
        self._settings = settings
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="VerdiffSegment worker", daemon=True)
        self.progress: tuple[str, int, int] = ("starting", 0, 0)
        self.computation: Computation | None = None
        self.error: BaseException | None = None
        self.error_traceback = ""
        self.outcome: str | None = None
        self.started_at: float | None = None
        self.seconds: float | None = None
        self.finished = False

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self._thread.start()

    def cancel(self) -> None:
        """Ask the worker to stop at the next batch of slices."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (tests, shutdown); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress = (stage, done, total)  # one tuple: read atomically by the poller

    def _run(self) -> None:
        import traceback

        from .pipeline import Cancelled

        try:
            self.computation = compute(self._image, progress=self._on_progress, cancel=self._cancel.is_set, **self._settings)
            self.outcome = "cancelled" if self._cancel.is_set() else "done"
        except Cancelled:
            self.outcome = "cancelled"
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error
            self.error_traceback = traceback.format_exc()
            self.outcome = "failed"
        finally:
            self._image = None
            self.seconds = time.perf_counter() - (self.started_at or time.perf_counter())
            self.finished = True


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


def run(
    scene,
    volume_node,
    model: str = "auto",
    steps: int | None = None,
    ensemble: int | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Outputs:
    """:func:`read_input`, :func:`compute` and :func:`apply_result` in one call (headless
    use and tests). A cancel or an error leaves ``scene`` as it was."""
    from .pipeline import Cancelled

    image = read_input(volume_node)
    computation = compute(image, model, steps, ensemble, device, seed, batch_size, progress, cancel)
    if cancel is not None and cancel():
        raise Cancelled()
    if progress is not None:
        progress("writing", 0, 0)
    return apply_result(scene, volume_node, computation)


def apply_result(scene, volume_node, computation: Computation) -> Outputs:
    """Put a computation's results into ``scene`` in one go (main thread only).

    All new nodes are built first; the previous outputs of ``volume_node`` are removed
    only after that succeeded. On any failure while building, every node and
    subject-hierarchy item created here is removed again, so the scene is as before."""
    if volume_node is None or volume_node.GetScene() is not scene or scene.GetNodeByID(volume_node.GetID()) is not volume_node:
        raise VerdiffError("the input volume is no longer in the scene; nothing was added")
    clock = time.perf_counter()
    result = computation.result
    dims = tuple(reversed(volume_node.GetImageData().GetDimensions()))  # (k, j, i)
    labels = np.asarray(sitk.GetArrayViewFromImage(result.labels))
    uncertainty = np.asarray(sitk.GetArrayViewFromImage(result.uncertainty), dtype=np.float32)
    if labels.ndim == 2:  # a 2D result of a single-slice input
        labels, uncertainty = labels[np.newaxis], uncertainty[np.newaxis]
    if labels.shape != dims or uncertainty.shape != dims:
        raise VerdiffError(f"results of shape {labels.shape} do not match the input volume {dims}; nothing was added")

    previous = find_outputs(scene, volume_node)
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items_before = _hierarchy_items(hierarchy)
    settings = dict(result.settings)
    settings["device_warning"] = computation.device_warning
    settings_json = json.dumps(settings, sort_keys=True)
    base = volume_node.GetName()
    try:
        uncertainty_node = _add_uncertainty_volume(scene, volume_node, uncertainty, f"{base} uncertainty")
        segmentation_node = _add_segmentation(scene, volume_node, result, computation.card, f"{base} vertebrae")
        statistics_node = _add_statistics_table(scene, volume_node, result, f"{base} vertebra statistics")
        for key, value in result.measurements.items():  # e.g. the Cobb angles of an X-ray
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
    display = node.GetScalarVolumeDisplayNode()
    color_id = next((i for i in UNCERTAINTY_COLOR_NODE_IDS if scene.GetNodeByID(i) is not None), None)
    if color_id is None:
        raise RuntimeError(f"none of the colour maps {UNCERTAINTY_COLOR_NODE_IDS} is in the scene")
    display.SetAndObserveColorNodeID(color_id)
    high = float(array.max()) if array.size else 0.0
    display.SetAutoWindowLevel(False)
    # 0 is "no disagreement" and reads dark; the brightest colour is this volume's maximum.
    display.SetWindowLevelMinMax(0.0, high if high > 0 else 1.0)
    node.SetAttribute("VerdiffSegment.Description", UNCERTAINTY_DESCRIPTION)
    return node


UNCERTAINTY_DESCRIPTION = (
    "Per-voxel standard deviation of the vertebra probability across the diffusion ensemble "
    "(0 = all samples agree; 0.5 = maximal disagreement). 0 also where the model's prior saw no spine."
)


def _add_segmentation(scene, volume_node, result, card, name: str):
    """One segment per entry of ``result.segments`` (per vertebra, or per card label when
    the pipeline ran without ``per_vertebra``), with its terminology and level tags."""
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
