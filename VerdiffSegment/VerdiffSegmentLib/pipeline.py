"""Image in, segmentation and uncertainty out, in the image's own geometry.

``segment(image, card)`` is the one path the command line, the Slicer module, the
benchmarks and validation all use:

1. check the image; a single-slice 3D image (an X-ray in Slicer) is handled as 2D;
2. resample to the canonical sagittal grid at the model's in-plane spacing
   (``inferers.sagittal``) and normalise as the card says; a 3D model's grid is isotropic
   (the slices are resampled to the same spacing);
3. 2D models: pad (never squash) to a multiple of the network's down-sampling, and sample
   the diffusion ensemble in batches of slices (``inferers.ensemble``);
   3D models: sample the ensemble on overlapping windows of the card's patch size and
   blend mean probability and standard deviation alike (``sliding_window_inference``,
   ``VOLUME_OVERLAP``, Gaussian weights);
4. label map = mean probability above 0.5, post-processed as the card says (``postprocess``:
   the probability averaged across neighbouring slices, the spine's connected chain kept,
   holes filled); uncertainty = the standard deviation of the probability across the
   ensemble's samples (0 where only the prior was used), averaged over neighbouring voxels
   where the card says; a reliability estimate with its warnings (``reliability``, from
   the samples before any smoothing);
5. map both back onto the input voxel grid: uncertainty linearly; labels of a binary model
   by mapping the mean foreground probability linearly and thresholding it at 0.5 there,
   so its boundary falls between the model grid's pixels (nearest-neighbour labels would
   carry the coarse grid's staircase: on AASCE X-rays, whose model grid is 5 px, the truth
   itself mapped there and back scores Dice 0.972 by nearest neighbour and 0.994 this
   way); a multi-class model's union the same way (its foreground probability: its most
   likely level's, ``foreground_probability``), each voxel of it with the level of the
   nearest voxel of its labels mapped by nearest neighbour (``labels_within``). Steps 4 and 5 are
   ``labels_and_uncertainty``, which the measurements that score sampled probabilities call too;
6. one label value and segment per vertebra, named by level where it can be decided
   (``levels``), and an AP X-ray's Cobb angles (``cobb``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk
import torch

from .cobb import cobb_measurements, estimate_missing_ends, estimated_ends_warning, undetermined_angles_warning
from .errors import Cancelled, VerdiffError
from .inferers import inference_autocast
from .inferers.ensemble import foreground_probability, labels_from_probability
from .inferers.sliding_window import sliding_window_inference, window_slices
from .memory import refuse_segmentation_above_available
from .io import check_image, looks_like_ct, plane_axes, single_slice_axis
from .levels import card_levels, name_vertebrae
from .ribs import RibCounter
from .endplate_tilt import predict_tilts, vertebra_tilts
from .level_map import predict_level_map
from .vertebra_level import PieceLevelReader
from .vertebra_outline import outline_vertebrae
from .models import AUTO_MODALITY, ModelCard, get_card, load_level_map, load_level_network, load_network, load_outline_network, load_strip_network, load_tilt_network, make_scheduler
from .postprocess import postprocess, smooth_probability_across_slices, smooth_uncertainty, unite_interpolated_slices
from .preparation import PreparedImage, coronal_view, in_pixel_units, picture_pixel_mm, prepare_for_card, slice_channels
from .radiograph import segment_radiograph
from .reliability import SELF_DICE_WARNING, reliability_estimate, vertebra_count_check
from .settings import SegmentSettings
from .transforms import pad_to_multiple


# A 3D model's windows overlap by half a patch on every axis: each voxel away from the
# volume's faces is predicted by 2-8 windows, whose Gaussian-weighted average hides the
# seams where a window's context is cut off (the MONAI/nnU-Net convention).
VOLUME_OVERLAP = 0.5
TILE_OVERLAP = 0.5  # a 2D card's tiles (``sample_tiles``): half a tile apart, as the 3D windows


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8 label map on the input grid
    uncertainty: sitk.Image  # float32 on the input grid
    segments: list[dict]  # per label: value, name, covers, color, voxels, volume_mm3, mean/max uncertainty
    settings: dict
    timings: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)  # e.g. "cobb_angles_deg" of an AP X-ray
    probability: sitk.Image | None = None  # float32 foreground probability on the input grid (``keep_probability``)
    level_coordinates: np.ndarray | None = None  # an X-ray card's level map on the picture [rows, cols] (``radiograph``'s scale check)


def is_planar(image: sitk.Image) -> bool:
    """A 2D image or a single-slice volume: no neighbouring slices."""
    return image.GetDimension() == 2 or single_slice_axis(image) is not None


def detect_modality(image: sitk.Image) -> str:
    """"XR" for 2D or single-slice images, "CT" for Hounsfield units, else "MR"."""
    if is_planar(image):
        return "XR"
    return "CT" if looks_like_ct(image) else "MR"


def check_card_fits(image: sitk.Image, card: ModelCard) -> None:
    """A 3D model (card network ``spatial_dims`` 3) segments volumes only, and so does a 2.5D
    model (card ``input.context_slices`` > 0). Decided: a 2D image (an X-ray) has no
    neighbouring slices, and replicating it into the neighbour channels would show the
    network an input it never saw in training (anatomy that does not change across the
    slices); the run is refused with a clear error instead. Training refuses 2.5D X-ray runs
    alike (``training.configs``). A coronal card (``input.view``) segments volumes only too."""
    planar = is_planar(image)
    if card.view == "coronal" and planar:  # a picture has one plane: there are no coronal planes to cut
        raise VerdiffError(f"model {card.name} reads a volume's coronal planes: it segments volumes, not 2D images or single slices; choose a sagittal model")
    if card.spatial_dims == 3 and planar:
        raise VerdiffError(f"model {card.name} is a 3D model: it segments volumes, not 2D images or single slices (an X-ray); choose a 2D model")
    if card.context_slices and planar:
        instead = f" such as {card.planar_model}" if card.planar_model else ""
        raise VerdiffError(
            f"model {card.name} reads {card.context_slices} neighbouring sagittal slice(s) on each side (2.5D): it segments volumes, "
            f"not 2D images or single slices (an X-ray); choose a model without context slices{instead}"
        )


def choose_card(image: sitk.Image, name: str = "auto") -> ModelCard:
    """The one card resolver (CLI, module, benchmarks): ``auto`` takes the default model of
    the image's detected modality (``AUTO_MODALITY``), a modality (``MR``, ``CT``, ``XR``)
    takes its default model, anything else is a bundled model's name.

    A modality's default that is 2.5D gives way to its card's ``planar_model`` on a single
    slice (``MR`` on a 2D sagittal MR picture), as the user asked for a modality, not a
    network; a model asked for by name is taken as it is (``check_card_fits`` refuses it)."""
    modality = detect_modality(image) if name == "auto" else name
    card = get_card(AUTO_MODALITY.get(modality, name))
    if (name in AUTO_MODALITY or name == "auto") and card.context_slices and card.planar_model and is_planar(image):
        return get_card(card.planar_model)
    return card


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when PyTorch sees a GPU, else the CPU; never MPS, whose kernels differ),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a device that is not there is a ``VerdiffError``."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise VerdiffError("--device mps was asked for but PyTorch sees no Apple GPU (MPS needs macOS on Apple silicon)")
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise VerdiffError(f"--device {name} was asked for but PyTorch sees no CUDA GPU")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise VerdiffError(f"--device {name} was asked for but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        return torch.device(name)
    raise VerdiffError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def segment(
    image: sitk.Image,
    card: ModelCard,
    steps: int | None = None,
    ensemble: int | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    network: torch.nn.Module | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    keep_probability: bool = False,
    per_vertebra: bool = True,
) -> SegmentationResult:
    """Segment ``image`` with the model of ``card``. ``progress(stage, done, total)`` is called
    as slices (3D models: windows) are done; ``cancel()`` returning True stops with ``Cancelled``
    between batches. A 3D model (card network ``spatial_dims`` 3) refuses 2D images.
    ``keep_probability``: also map the ensemble's mean foreground probability (the most
    likely label's) onto the input grid (evaluation's calibration; off by default: it costs
    one more resampling).

    ``per_vertebra``: one label and segment per vertebra, named by level where it can be
    decided (``levels.name_vertebrae``); the union is the model's foreground either way."""
    timings = {}
    clock = time.perf_counter()
    # The one check of the request (settings.py); a deterministic card gets 0 steps, 1 member.
    checked = SegmentSettings(card.name, steps, ensemble, str(device), seed, batch_size).for_card(card)
    steps, ensemble, seed, batch_size = checked.steps, checked.ensemble, checked.seed, checked.batch_size
    torch_device = resolve_device(device)
    check_image(image)
    check_card_fits(image, card)
    refuse_segmentation_above_available(image, card, ensemble, batch_size)  # before any large allocation
    scheduler = make_scheduler(card)
    if scheduler is not None:
        scheduler.set_timesteps(steps)  # within the card's range: checked above
    network = network or load_network(card, torch_device)
    # the helper networks (tens of ms to check and load) fail here when missing or tampered, before sampling
    level_map_network = load_level_map(card, torch_device) if per_vertebra else None
    level_network = load_level_network(card, torch_device) if per_vertebra else None
    strip_network = load_strip_network(card, torch_device) if per_vertebra else None
    tilt_network = load_tilt_network(card, torch_device) if per_vertebra else None
    outline_network = load_outline_network(card, torch_device) if per_vertebra else None
    timings["load_model"] = time.perf_counter() - clock
    networks = (network, level_map_network, level_network, strip_network, tilt_network, outline_network)

    def run(picture: sitk.Image, scale: float = 1.0) -> SegmentationResult:
        """One pass of the model over ``picture``, whose lengths times ``scale`` are in the
        card's units (its mm; an X-ray card's training pixels): the picture is given that
        pixel size, so the grid, post-processing and naming all read it so, and the results
        come back in its own geometry."""
        spaced = picture if scale == 1.0 else scaled_spacing(picture, scale)
        if spaced is not picture:  # a finer grid than the input's own may hold more pixels
            refuse_segmentation_above_available(spaced, card, ensemble, batch_size)
        # a coronal card: the canonical sagittal grid of the turned volume is its coronal planes
        viewed = coronal_view(spaced) if card.view == "coronal" else spaced
        result = _segment_on_grid(viewed, card, networks, scheduler, steps, ensemble, torch_device, seed, batch_size, progress, cancel, keep_probability, per_vertebra)
        if viewed is not spaced:  # the same voxels: the results take the volume's geometry back
            result = in_the_geometry_of(result, spaced)
        if spaced is not picture:
            result = in_the_pictures_units(result, picture, scale)
        for stage, seconds in result.timings.items():  # a second look adds its time
            timings[stage] = timings.get(stage, 0.0) + seconds
        result.timings = timings
        return result

    if card.radiograph is not None and is_planar(image):
        return segment_radiograph(image, card.radiograph, run)
    # a picture in pixel units is read as 1 mm pixels, or by the card's field of view (preparation, decision 5)
    pixel_mm = picture_pixel_mm(image, card.picture_field_of_view) if is_planar(image) and in_pixel_units(image) else 1.0
    result = run(image, pixel_mm)
    if pixel_mm != 1.0:
        result.settings["picture_pixel_mm"] = pixel_mm
        result.settings["reliability"]["warnings"].append(
            f"the picture has no pixel size and its longer side ({card.picture_field_of_view[0] / pixel_mm:.0f} px) is outside the "
            f"{card.picture_field_of_view[1][0]:.0f}-{card.picture_field_of_view[1][1]:.0f} px of the model's pictures: "
            f"it was read as spanning {card.picture_field_of_view[0]:.0f} mm ({pixel_mm:.3g} mm a pixel)"
        )
    return result


def scaled_spacing(image: sitk.Image, scale: float) -> sitk.Image:
    """``image`` with its in-plane spacing multiplied by ``scale`` (a single-slice volume keeps
    its slice axis's spacing); the pixels are the same."""
    spaced = sitk.Image(image)
    axes = plane_axes(image)
    spaced.SetSpacing([s * scale if k in axes else s for k, s in enumerate(image.GetSpacing())])
    return spaced


def in_the_geometry_of(result: SegmentationResult, image: sitk.Image) -> SegmentationResult:
    """``result``'s images (on the voxels of ``image`` under another geometry: a coronal card's
    turned view) given ``image``'s geometry."""
    for name in ("labels", "uncertainty", "probability"):
        array = getattr(result, name)
        if array is not None:
            array.CopyInformation(image)
    return result


def in_the_pictures_units(result: SegmentationResult, image: sitk.Image, scale: float) -> SegmentationResult:
    """``result`` of ``image`` segmented with ``scaled_spacing`` put back into its own geometry:
    its images, and the segments' areas (volumes) and heights in the image's units."""
    for output in (result.labels, result.uncertainty, result.probability):  # made by this pass: set in place
        if output is not None:
            output.CopyInformation(image)
    segments = segment_statistics(result.labels, result.uncertainty, result.segments)
    for segment in segments:
        if segment.get("height_mm") is not None:
            segment["height_mm"] = segment["height_mm"] / scale
    result.segments = segments
    return result


def _segment_on_grid(image, card, networks, scheduler, steps, ensemble, torch_device, seed, batch_size, progress, cancel, keep_probability, per_vertebra) -> SegmentationResult:
    """``segment`` after its checks and loading: one pass of the model over ``image`` on
    ``card``'s grid."""
    network, level_map_network, level_network, strip_network, tilt_network, outline_network = networks
    timings = {}
    volumetric = card.spatial_dims == 3

    clock = time.perf_counter()
    prepared = prepare_for_card(image, card)
    stack = prepared.stack
    timings["preprocess"] = time.perf_counter() - clock

    clock = time.perf_counter()
    generator = torch.Generator().manual_seed(int(seed))
    n_slices = stack.shape[0]
    sample = (card, network, scheduler, ensemble, generator, torch_device)
    run_warnings: list[str] = []  # a fall back to the CPU (``OutOfMemoryFallback``)
    on_oom = {"fallback": cpu_fallback(torch_device), "warnings": run_warnings}
    if volumetric:
        probability, spread, diffused, windows = sample_volume(stack, *sample, batch_size, progress, cancel, **on_oom)
    else:
        probability, spread, diffused = sample_slices(stack, *sample, batch_size, progress, cancel, **on_oom, offsets=prepared.input_offsets)
    timings["inference"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = labels_and_uncertainty(probability, spread, prepared, card, keep_probability)
    reliability = result.reliability
    reliability["warnings"][:0] = run_warnings  # the path by which warnings reach the CLI, its JSON and the module
    labels, uncertainty, foreground = result.labels, result.uncertainty, result.foreground
    label_info, measurements, coordinates = card.labels, {}, None
    if per_vertebra:  # on the plane of a single-slice volume: its "up" is the picture's
        coordinates = level_reader = None  # the level helpers read the picture (a radiograph), not the sagittal stack
        picture = sitk.GetArrayViewFromImage(prepared.planar) if prepared.planar.GetDimension() == 2 else None
        if level_map_network is not None and picture is not None:
            coordinates = predict_level_map(level_map_network, picture)
        if level_network is not None and picture is not None:
            level_reader = PieceLevelReader(level_network, picture, strip_network)
        # the ribs are read in Hounsfield units: not on an MR given to the CT model by hand
        rib_counter = RibCounter(prepared.planar) if card.rib_anchor and prepared.planar.GetDimension() == 3 and looks_like_ct(prepared.planar) else None
        named, label_info, left_out = name_vertebrae(labels, card, gaps=result.gaps, coordinates=coordinates, level_reader=level_reader, rib_counter=rib_counter)
        if left_out:  # vertebrae beyond the card's levels (levels.py, step 4): out of the foreground too, listed in the summary
            measurements["vertebrae_left_out"] = left_out
            if foreground is not None:
                foreground = sitk.Mask(foreground, sitk.Cast(named > 0, sitk.sitkUInt8))
        labels = named
        if outline_network is not None and picture is not None and label_info:  # each piece completed with the quadrilateral of its corners read from the picture (vertebra_outline.py)
            outlined, completed = outline_vertebrae(outline_network, picture, sitk.GetArrayViewFromImage(labels), [int(s["value"]) for s in label_info])
            outlined = sitk.Cast(sitk.GetImageFromArray(outlined), labels.GetPixelID())
            outlined.CopyInformation(labels)
            labels = outlined
            measurements["vertebrae_outlined"] = len(completed)
        vertebra_count_check(reliability, len(label_info), len(card_levels(card) or ()), card.min_vertebrae_share)
        if card.modality == "XR":  # angles, end vertebrae, their tilts (the tilt network's where the card has one, else the gaps)
            tilts, estimated, range_levels = None, None, card_levels(card)
            if tilt_network is not None and picture is not None and label_info:
                tilts = vertebra_tilts(tilt_network, picture, sitk.GetArrayViewFromImage(labels), [int(s["value"]) for s in label_info])
                if card.estimate_missing_ends:  # the end vertebrae not drawn, placed by the spine's proportions (cobb.py)
                    estimated = estimate_missing_ends(sitk.GetArrayViewFromImage(labels), label_info, range_levels)
                    for vertebra, tilt in zip(estimated, predict_tilts(tilt_network, picture, np.array([e["centre"] for e in estimated]).reshape(-1, 2), np.array([e["width"] for e in estimated]))):
                        vertebra["tilt_deg"] = float(tilt)
            measurements.update(cobb_measurements(labels, label_info, result.gaps, tilts, (range_levels[0], range_levels[-1]) if range_levels else None, estimated))
            if measurements.get("cobb_undetermined"):
                reliability["warnings"].append(undetermined_angles_warning(measurements["cobb_undetermined"]))
            placed_note = estimated_ends_warning(measurements)
            if placed_note:
                reliability["warnings"].append(placed_note)
    labels, uncertainty = prepared.restore(labels), prepared.restore(uncertainty)
    foreground = prepared.restore(foreground) if foreground is not None else None
    segments = segment_statistics(labels, uncertainty, label_info)
    timings["postprocess"] = time.perf_counter() - clock
    settings = {
        "model": card.name,
        "model_version": card.version,
        "family": card.family_name,
        "steps": steps,
        "ensemble": ensemble,
        "device": str(torch_device),
        "seed": int(seed),
        "slices": n_slices,
        "diffused_slices": diffused,
        **({"windows": windows, "patch_size": list(card.patch_size)} if volumetric else {}),
        "reliability": reliability,
    }
    return SegmentationResult(labels, uncertainty, segments, settings, timings, probability=foreground, measurements=measurements, level_coordinates=coordinates)


@dataclass
class LabelsAndUncertainty:
    """One run's results from its sampled probability (``labels_and_uncertainty``)."""

    labels_on_grid: np.ndarray  # uint8 [slices, rows, cols] on the sagittal grid, post-processed
    labels: sitk.Image  # uint8 label map on ``prepared.planar``'s grid
    uncertainty: sitk.Image  # float32 on ``prepared.planar``'s grid
    foreground: sitk.Image | None  # float32 foreground probability on ``prepared.planar``'s grid (``keep_probability``)
    reliability: dict  # ``reliability.reliability_estimate``
    gaps: np.ndarray | None = None  # bool, the gaps between vertebrae on the input grid (a card's gap channel), else None


def labels_and_uncertainty(probability: np.ndarray, spread: np.ndarray, prepared: PreparedImage, card: ModelCard, keep_probability: bool = False) -> LabelsAndUncertainty:
    """Steps 4 and 5 of the module docstring, the one way from the ensemble's mean probability
    and spread [slices, classes, rows, cols] on ``prepared``'s sagittal grid to the label map,
    uncertainty and (``keep_probability``) foreground probability on the input grid
    (``prepared.planar``'s; ``prepared.restore`` puts them into the image's geometry) and the
    reliability estimate. ``segment`` and the measurements that score sampled probabilities
    (``benchmarks/flip_averaging.py``) call it, so they cannot drift apart.

    The reliability estimate sees the labels of the probability as it was sampled (its
    thresholds were calibrated so); the labels are thresholded and post-processed again only
    where the card smooths the probability across slices or unites interpolated slices with
    their acquired neighbours (``postprocess``; post-processing a CT takes seconds). The
    foreground probability is the probability those steps leave, 0 where post-processing
    removed a voxel and 1 where it filled one, so that a binary model's labels, thresholded on
    the input grid, are the post-processed ones.

    A card's gap channel (``ModelCard.gap_channel``) is split off first: everything above reads
    the label channels only, and the gaps (mean probability > 0.5) come back on the input grid
    for the per-vertebra step."""
    gaps = None
    if card.gap_channel is not None:
        gap_probability = np.ascontiguousarray(probability[:, card.gap_channel])
        probability, spread = probability[:, : card.gap_channel], spread[:, : card.gap_channel]
        gaps = sitk.GetArrayFromImage(prepared.to_input_grid(gap_probability, is_label=False)) > 0.5
    raw_labels = labels_from_probability(probability)
    labels_stack = postprocess(raw_labels, prepared.grid_spacing, card.postprocess)
    reliability = reliability_estimate(probability, spread, labels_stack, card.self_dice_warning or SELF_DICE_WARNING)
    smoothed = smooth_probability_across_slices(probability, prepared.grid_spacing[0], card.postprocess)
    smoothed = unite_interpolated_slices(smoothed, prepared.stack, card.postprocess)
    if smoothed is not probability:
        probability, raw_labels = smoothed, labels_from_probability(smoothed)
        labels_stack = postprocess(raw_labels, prepared.grid_spacing, card.postprocess)
    uncertainty_stack = smooth_uncertainty(spread.max(axis=1).astype(np.float32), prepared.grid_spacing, card.postprocess)
    uncertainty = prepared.to_input_grid(uncertainty_stack, is_label=False)
    foreground_stack = foreground_probability(probability)
    foreground_stack[(raw_labels > 0) & (labels_stack == 0)] = 0.0  # what post-processing removed
    foreground_stack[(raw_labels == 0) & (labels_stack > 0)] = 1.0  # and what it filled
    foreground = prepared.to_input_grid(foreground_stack, is_label=False)
    labels = sitk.Cast(foreground > 0.5, sitk.sitkUInt8)  # sub-voxel boundaries (step 5 of the module docstring)
    if probability.shape[1] > 1:
        labels = labels_within(labels, prepared.to_input_grid(labels_stack, is_label=True))
    return LabelsAndUncertainty(labels_stack, labels, uncertainty, foreground if keep_probability else None, reliability, gaps)


def labels_within(foreground: sitk.Image, nearest: sitk.Image) -> sitk.Image:
    """A multi-class result on the input grid: the union where the foreground probability,
    mapped linearly, is above 0.5 (``foreground``, as a binary card's), each of its voxels
    with the label of the nearest labelled voxel of ``nearest`` (the labels mapped by nearest
    neighbour). So the union is not the coarse grid's staircase, and no voxel of it is left
    without a label where the two mappings disagree at the edge."""
    inside = sitk.GetArrayViewFromImage(foreground) > 0
    values = sitk.GetArrayFromImage(nearest)
    if inside.any() and values.any():
        _, index = ndi.distance_transform_edt(values == 0, sampling=foreground.GetSpacing()[::-1], return_indices=True)
        values = values[tuple(index)]
    result = sitk.GetImageFromArray(np.where(inside, values, 0).astype(np.uint8))
    result.CopyInformation(foreground)
    return result


def sample_slices(stack, card, network, scheduler, ensemble, generator, torch_device, batch_size, progress, cancel, fallback=None, warnings=None, offsets=(0.0,)):
    """The 2D models: the ensemble on batches of padded sagittal slices. Returns the mean
    probability and its spread [slices, classes, rows, cols] and how many slices were diffused.
    An out-of-memory error halves the batch, then moves the work to ``fallback``
    (``OutOfMemoryFallback``; its warning is appended to ``warnings``). ``offsets``: the input
    channels' slice offsets (``PreparedImage.input_offsets``; a 2.5D card's neighbours), the
    channels built by ``preparation.slice_channels``. A card's ``edge_padding`` pads each slice
    by that many pixels on every side (``edge_padding_sides`` "superior": the top only), the
    border repeated, and the result is cropped back (``models``, edge padding). A card's
    ``tile`` samples the slices in overlapping tiles of that size, blended (``sample_tiles``;
    ``models``, tiles)."""
    if len(offsets) != 1 + 2 * card.context_slices:  # a caller's mistake, not a user's: the network would fail obscurely
        raise ValueError(f"model {card.name} reads {1 + 2 * card.context_slices} input channel(s); got offsets for {len(offsets)} (pass PreparedImage.input_offsets)")
    margin = card.edge_padding
    rows, cols = stack.shape[1:]
    side = 0 if card.edge_padding_sides == "superior" else margin  # the other three sides' padding
    if margin:
        stack = np.pad(stack, ((0, 0), (margin, side), (side, side)), mode="edge")
    stack, _ = pad_to_multiple(stack, network.input_multiple)
    within = (slice(margin, margin + rows), slice(side, side + cols))
    n_slices = stack.shape[0]
    probability = np.zeros((n_slices, network.num_classes, rows, cols), np.float32)
    spread = np.zeros_like(probability)
    diffused = 0
    limit = batch_size
    if torch_device.type == "cuda":
        limit = max(batch_size, gpu_batch_size(stack.shape[1:], ensemble, network, torch_device))
    sampler = OutOfMemoryFallback(card, network, scheduler, ensemble, generator, torch_device, limit, fallback, batch_size, "slice")
    start = 0
    try:
        while start < n_slices:
            if cancel is not None and cancel():
                raise Cancelled()
            images = torch.from_numpy(slice_channels(stack, range(start, min(start + sampler.batch_size, n_slices)), offsets))
            mean, std, n = sample_tiles(sampler, images, card.tile, card.tile_padding == "zeros") if card.tile else sampler.sample(images)
            end = start + len(mean)
            probability[start:end] = mean[(..., *within)]
            spread[start:end] = std[(..., *within)]
            diffused += n
            start = end
            if progress is not None:
                progress("inference", start, n_slices)
    finally:
        sampler.finish(warnings)
    return probability, spread, diffused


def sample_tiles(sampler, images: torch.Tensor, tile: int, pad_short_axes: bool = False):
    """``sampler.sample`` on a batch of slices [B, C, rows, cols] in overlapping ``tile`` x
    ``tile`` windows (half a window apart, Gaussian-blended: ``sliding_window_inference``), for
    every slice of the batch. An axis shorter than ``tile`` is one window of its own length,
    or with ``pad_short_axes`` (the card's ``input.tile_padding`` "zeros") padded with zeros at
    its end up to ``tile`` and cropped back, as training pads a slice smaller than its crop
    (``training.sampler.pad_up_to``). Which one is the training data's: AP radiographs are
    mostly narrower than the X-ray crop (100-240 px of 224 on the 4 px grid), so the X-ray
    model learned the padding (padded 0.819, unpadded 0.806 binary Dice on the 48 held-out
    radiographs); no CT slice it trained on was shorter than its crop, and a CT cut to L2-S1
    (124 rows of 176), padded, lost every vertebra. Returns the blended mean and spread and
    the slices diffused, as ``sampler.sample`` does for whole slices (the spread blended like
    the mean, as in ``sample_volume``)."""
    patch = tuple(tile if pad_short_axes else min(tile, size) for size in images.shape[2:])
    if patch == tuple(images.shape[2:]):  # one window, the slice itself
        return sampler.sample(images)
    diffused = 0

    def predict(windows: torch.Tensor) -> torch.Tensor:
        nonlocal diffused
        both, n = sample_windows(sampler, windows)
        diffused += n
        return torch.from_numpy(both)

    # one window of every slice per call: the sampler's batch is the slices' batch
    blended = sliding_window_inference(images, patch, predict, TILE_OVERLAP, "gaussian", 1).numpy()
    classes = blended.shape[1] // 2
    return blended[:, :classes], blended[:, classes:], len(images) if diffused else 0


def sample_windows(sampler, windows: torch.Tensor) -> tuple[np.ndarray, int]:
    """``sampler.sample`` on every window of ``windows``, in as many calls as an out-of-memory
    error leaves (the sampler returns fewer than asked when its batch shrank): the mean and
    spread concatenated along the channels [N, 2K, ...] (as ``sliding_window_inference``
    blends them), and the number diffused. Shared by 2D tiles and 3D windows."""
    parts, sampled, diffused = [], 0, 0
    while sampled < len(windows):
        mean, std, n = sampler.sample(windows[sampled:])
        parts.append(np.concatenate([mean, std], axis=1))
        sampled += len(mean)
        diffused += n
    return np.concatenate(parts), diffused


def sample_volume(stack, card, network, scheduler, ensemble, generator, torch_device, batch_size, progress, cancel, fallback=None, warnings=None):
    """The 3D models: the ensemble on overlapping windows of the card's patch size over the
    isotropic volume [slices, rows, cols], ``batch_size`` windows per sampler call.

    Each call's mean and standard deviation are concatenated along the channels and blended
    together (``sliding_window_inference``), so the uncertainty is the weighted average of
    the windows' sample spreads, as the probability is of their means. ``progress`` counts
    windows; ``cancel`` is asked before each batch of windows. Returns the mean
    probability and its spread [slices, classes, rows, cols] (the layout of the 2D path),
    the number of slices diffused (all, for a diffusion family) and of windows.
    An out-of-memory error splits a call's windows into smaller batches, then moves the
    sampling to ``fallback`` (``OutOfMemoryFallback``; its warning is appended to
    ``warnings``); the volume and the blending stay on ``torch_device``."""
    patch_size = card.patch_size
    if patch_size is None or len(patch_size) != 3:
        raise VerdiffError(f"model {card.name} is a 3D model but its card gives no input.patch_size (slices, rows, columns)")
    total = len(window_slices(stack.shape, patch_size, VOLUME_OVERLAP))
    done, diffused = 0, 0
    sampler = OutOfMemoryFallback(card, network, scheduler, ensemble, generator, torch_device, batch_size, fallback, batch_size, "window")

    def predict(patches: torch.Tensor) -> torch.Tensor:
        nonlocal done, diffused
        if cancel is not None and cancel():
            raise Cancelled()
        both, n = sample_windows(sampler, patches)
        diffused += n
        done += len(patches)
        if progress is not None:
            progress("inference", done, total)
        return torch.from_numpy(both).to(patches.device)

    volume = torch.from_numpy(np.ascontiguousarray(stack[None, None])).to(torch_device)
    try:
        blended = sliding_window_inference(volume, patch_size, predict, VOLUME_OVERLAP, "gaussian", batch_size)[0].cpu().numpy()
    finally:
        sampler.finish(warnings)
    classes = network.num_classes
    # [classes, slices, rows, cols] -> [slices, classes, rows, cols]
    probability, spread = (np.ascontiguousarray(part.swapaxes(0, 1)) for part in (blended[:classes], blended[classes:]))
    return probability, spread, stack.shape[0] if diffused else 0, total


def cpu_fallback(device: torch.device) -> torch.device | None:
    """Where a run that cannot fit one slice (window) in ``device``'s memory goes on: the
    CPU, from a GPU; nowhere from the CPU itself (its out-of-memory is an error)."""
    return None if device.type == "cpu" else torch.device("cpu")


class OutOfMemoryFallback:
    """The family's sampler on batches, surviving an out-of-memory error of the GPU.

    ``sample(images)`` samples the first ``batch_size`` of ``images`` (on any device; moved
    to the current one) and returns the sampler's (mean, std, diffused) for them: fewer
    than asked when the batch shrank on the way (the caller asks again for the rest). On
    ``torch.cuda.OutOfMemoryError`` the generator is rewound, so the retried images draw
    the same noise, and:

    1. a batch of several images is halved (and stays halved for the rest of the run);
    2. a single image that does not fit moves the network to ``fallback`` (the CPU,
       ``cpu_fallback``) with a warning in ``warnings``, and the rest of the run goes on
       there in batches of ``fallback_batch_size`` (the batch the caller asked for; the GPU's
       larger one would starve the progress reports). Where there is no fallback (already on
       the CPU) it is a ``VerdiffError``.

    ``finish(warnings)`` moves the network back where it was (the CLI and the module keep
    one network per model and device across runs) and hands on the warnings."""

    def __init__(self, card, network, scheduler, ensemble, generator, device, batch_size, fallback, fallback_batch_size, unit):
        self.card, self.network, self.scheduler, self.ensemble, self.generator = card, network, scheduler, ensemble, generator
        self.home = self.device = device
        self.batch_size, self.fallback, self.fallback_batch_size, self.unit = int(batch_size), fallback, int(fallback_batch_size), unit
        self.warnings: list[str] = []

    def sample(self, images: torch.Tensor):
        while True:
            state = self.generator.get_state()
            try:
                batch = images[: self.batch_size].to(self.device)
                with inference_autocast(self.device):
                    return self.card.family.sample(self.network, self.scheduler, batch, self.ensemble, self.generator)
            except torch.cuda.OutOfMemoryError:
                attempted = min(len(images), self.batch_size)
            batch = None
            self.generator.set_state(state)  # the retried images draw the same noise
            torch.cuda.empty_cache()  # after the except block: its traceback held the batch's tensors
            if attempted > 1:
                self.batch_size = attempted // 2
            elif self.fallback is not None:
                self.move_to_fallback()
            else:
                raise VerdiffError(f"the GPU ran out of memory on a single {self.unit}; choose the CPU device or a smaller ensemble")

    def move_to_fallback(self) -> None:
        self.warnings.append(
            f"the GPU ({self.device}) ran out of memory on a single {self.unit}: the rest of the run went on on the {self.fallback.type.upper()}, "
            "which is slower (the result is as valid; a smaller ensemble may fit the GPU)"
        )
        self.network.to(self.fallback)
        torch.cuda.empty_cache()
        self.device, self.fallback, self.batch_size = self.fallback, None, self.fallback_batch_size

    def finish(self, warnings: list[str] | None) -> None:
        """After the run (whether it ended or failed): the network back where it was, and the
        run's warnings appended to ``warnings`` (where given)."""
        if self.device != self.home:
            self.network.to(self.home)
            self.device = self.home
        if warnings is not None:
            warnings.extend(self.warnings)


def gpu_batch_size(slice_shape, ensemble: int, network: torch.nn.Module, device: torch.device, budget: float = 0.5) -> int:
    """Slices per batch that fit in ``budget`` of the GPU's free memory: a heuristic of
    64 float32 activations of the first level's width per pixel and ensemble member (the
    U-Nets' peak); an out-of-memory error still falls back (``OutOfMemoryFallback``)."""
    free, _ = torch.cuda.mem_get_info(device)
    width = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).out_channels
    per_slice = 64 * 4 * width * ensemble * int(np.prod(slice_shape))
    return int(max(1, min(256, budget * free // per_slice)))


def segment_statistics(labels: sitk.Image, uncertainty: sitk.Image, label_info: list[dict]) -> list[dict]:
    """Per label: voxel count, volume in mm^3 (area in mm^2 for 2D), mean and max uncertainty inside."""
    label_array = sitk.GetArrayViewFromImage(labels)
    uncertainty_array = sitk.GetArrayViewFromImage(uncertainty)
    voxel_size = float(np.prod(labels.GetSpacing()))
    out = []
    for info in label_info:
        inside = label_array == info["value"]
        count = int(inside.sum())
        values = uncertainty_array[inside]
        out.append(
            {
                **info,
                "voxels": count,
                ("volume_mm3" if labels.GetDimension() == 3 else "area_mm2"): round(count * voxel_size, 3),
                "mean_uncertainty": round(float(values.mean()), 6) if count else None,
                "max_uncertainty": round(float(values.max()), 6) if count else None,
            }
        )
    return out
