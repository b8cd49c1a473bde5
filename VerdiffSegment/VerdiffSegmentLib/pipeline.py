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
   the spine's connected chain kept, holes filled); uncertainty = the standard deviation of the
   probability across the ensemble's samples (0 where only the prior was used); a
   reliability estimate with its warnings (``reliability``);
5. map both back onto the input voxel grid: uncertainty linearly; labels of a binary model
   by mapping the mean foreground probability linearly and thresholding it at 0.5 there,
   so its boundary falls between the model grid's pixels (nearest-neighbour labels would
   carry the coarse grid's staircase: on AASCE X-rays, whose model grid is 5 px, the truth
   itself mapped there and back scores Dice 0.972 by nearest neighbour and 0.994 this
   way); labels of a multi-class model by nearest neighbour.
6. one label value and segment per vertebra, named by level where it can be decided
   (``levels``), and an AP X-ray's Cobb angles (``cobb``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .cobb import cobb_angles
from .errors import VerdiffError
from .inferers import inference_autocast
from .inferers.ensemble import labels_from_probability
from .inferers.sliding_window import sliding_window_inference, window_slices
from .memory import refuse_segmentation_above_available
from .io import check_image, looks_like_ct, single_slice_axis
from .levels import name_vertebrae
from .models import AUTO_MODALITY, MAX_ENSEMBLE, ModelCard, get_card, load_network, make_scheduler
from .postprocess import postprocess
from .preparation import prepare_for_card
from .reliability import SELF_DICE_WARNING, reliability_estimate
from .transforms import pad_to_multiple


# A 3D model's windows overlap by half a patch on every axis: each voxel away from the
# volume's faces is predicted by 2-8 windows, whose Gaussian-weighted average hides the
# seams where a window's context is cut off (the MONAI/nnU-Net convention).
VOLUME_OVERLAP = 0.5

# Slices (3D models: windows) per network call; more is never faster and only risks memory.
MAX_BATCH_SIZE = 4096


class Cancelled(Exception):
    """Raised inside ``segment`` when the caller's ``cancel()`` returns True."""


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8 label map on the input grid
    uncertainty: sitk.Image  # float32 on the input grid
    segments: list[dict]  # per label: value, name, covers, color, voxels, volume_mm3, mean/max uncertainty
    settings: dict
    timings: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)  # e.g. "cobb_angles_deg" of an AP X-ray
    probability: sitk.Image | None = None  # float32 foreground probability on the input grid (``keep_probability``)


def detect_modality(image: sitk.Image) -> str:
    """"XR" for 2D or single-slice images, "CT" for Hounsfield units, else "MR"."""
    if image.GetDimension() == 2 or single_slice_axis(image) is not None:
        return "XR"
    return "CT" if looks_like_ct(image) else "MR"


def check_card_fits(image: sitk.Image, card: ModelCard) -> None:
    """A 3D model (card network ``spatial_dims`` 3) segments volumes only."""
    if card.spatial_dims == 3 and (image.GetDimension() == 2 or single_slice_axis(image) is not None):
        raise VerdiffError(f"model {card.name} is a 3D model: it segments volumes, not 2D images or single slices (an X-ray); choose a 2D model")


def choose_card(image: sitk.Image, name: str = "auto") -> ModelCard:
    """The one card resolver (CLI, module, benchmarks): ``auto`` takes the default model of
    the image's detected modality (``AUTO_MODALITY``), a modality (``MR``, ``CT``, ``XR``)
    takes its default model, anything else is a bundled model's name."""
    modality = detect_modality(image) if name == "auto" else name
    return get_card(AUTO_MODALITY.get(modality, name))


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
    steps = card.default_steps if steps is None else int(steps)
    ensemble = card.default_ensemble if ensemble is None else int(ensemble)
    if not 1 <= ensemble <= MAX_ENSEMBLE:
        raise VerdiffError(f"ensemble size must be between 1 and {MAX_ENSEMBLE}, got {ensemble}")
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise VerdiffError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    torch_device = resolve_device(device)
    check_image(image)
    check_card_fits(image, card)
    volumetric = card.spatial_dims == 3
    refuse_segmentation_above_available(image, card, ensemble, batch_size)  # before any large allocation
    scheduler = make_scheduler(card)
    if scheduler is None:  # a deterministic family: one pass, no samples
        steps, ensemble = 0, 1
    else:
        try:
            scheduler.set_timesteps(steps)
        except ValueError as error:
            raise VerdiffError(str(error)) from None
    network = network or load_network(card, torch_device)
    timings["load_model"] = time.perf_counter() - clock

    clock = time.perf_counter()
    prepared = prepare_for_card(image, card)
    stack = prepared.stack
    timings["preprocess"] = time.perf_counter() - clock

    clock = time.perf_counter()
    generator = torch.Generator().manual_seed(int(seed))
    n_slices = stack.shape[0]
    sample = (card, network, scheduler, ensemble, generator, torch_device)
    if volumetric:
        probability, spread, diffused, windows = sample_volume(stack, *sample, batch_size, progress, cancel)
    else:
        probability, spread, diffused = sample_slices(stack, *sample, batch_size, progress, cancel)
    timings["inference"] = time.perf_counter() - clock

    clock = time.perf_counter()
    raw_labels = labels_from_probability(probability)
    labels_stack = postprocess(raw_labels, prepared.grid_spacing, card.postprocess)
    reliability = reliability_estimate(probability, spread, labels_stack, card.self_dice_warning or SELF_DICE_WARNING)
    uncertainty_stack = spread.max(axis=1).astype(np.float32)
    uncertainty = prepared.to_input_grid(uncertainty_stack, is_label=False)
    foreground = None
    if network.num_classes == 1 or keep_probability:
        foreground_stack = probability.max(axis=1)
        foreground_stack[(raw_labels > 0) & (labels_stack == 0)] = 0.0  # what post-processing removed
        foreground_stack[(raw_labels == 0) & (labels_stack > 0)] = 1.0  # and what it filled
        foreground = prepared.to_input_grid(foreground_stack, is_label=False)
    if network.num_classes == 1:
        labels = sitk.Cast(foreground > 0.5, sitk.sitkUInt8)  # sub-voxel boundaries (``map_back`` in the docstring)
    else:
        labels = prepared.to_input_grid(labels_stack, is_label=True)
    foreground = foreground if keep_probability else None
    label_info, measurements = card.labels, {}
    if per_vertebra:  # on the plane of a single-slice volume: its "up" is the picture's
        labels, label_info = name_vertebrae(labels, card)
        if card.modality == "XR":
            measurements["cobb_angles_deg"] = cobb_angles(labels, label_info)
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
    return SegmentationResult(labels, uncertainty, segments, settings, timings, probability=foreground, measurements=measurements)


def sample_slices(stack, card, network, scheduler, ensemble, generator, torch_device, batch_size, progress, cancel):
    """The 2D models: the ensemble on batches of padded sagittal slices. Returns the mean
    probability and its spread [slices, classes, rows, cols] and how many slices were diffused."""
    stack, (rows, cols) = pad_to_multiple(stack, network.input_multiple)
    n_slices = stack.shape[0]
    probability = np.zeros((n_slices, network.num_classes, rows, cols), np.float32)
    spread = np.zeros_like(probability)
    diffused = 0
    if torch_device.type == "cuda":
        batch_size = max(batch_size, gpu_batch_size(stack.shape[1:], ensemble, network, torch_device))
    start = 0
    while start < n_slices:
        if cancel is not None and cancel():
            raise Cancelled()
        batch = torch.from_numpy(stack[start : start + batch_size, None]).to(torch_device)
        state = generator.get_state()
        try:
            with inference_autocast(torch_device):
                mean, std, n = card.family.sample(network, scheduler, batch, ensemble, generator)
        except torch.cuda.OutOfMemoryError:
            batch_size = smaller_batch_after_oom(batch_size, len(batch))
            generator.set_state(state)  # the retried batch draws the same noise
            continue
        probability[start : start + len(batch)] = mean[..., :rows, :cols]
        spread[start : start + len(batch)] = std[..., :rows, :cols]
        diffused += n
        start += len(batch)
        if progress is not None:
            progress("inference", start, n_slices)
    return probability, spread, diffused


def sample_volume(stack, card, network, scheduler, ensemble, generator, torch_device, batch_size, progress, cancel):
    """The 3D models: the ensemble on overlapping windows of the card's patch size over the
    isotropic volume [slices, rows, cols], ``batch_size`` windows per sampler call.

    Each call's mean and standard deviation are concatenated along the channels and blended
    together (``sliding_window_inference``), so the uncertainty is the weighted average of
    the windows' sample spreads, as the probability is of their means. ``progress`` counts
    windows; ``cancel`` is asked before each batch of windows. Returns the mean
    probability and its spread [slices, classes, rows, cols] (the layout of the 2D path),
    the number of slices diffused (all, for a diffusion family) and of windows."""
    patch_size = card.patch_size
    if patch_size is None or len(patch_size) != 3:
        raise VerdiffError(f"model {card.name} is a 3D model but its card gives no input.patch_size (slices, rows, columns)")
    total = len(window_slices(stack.shape, patch_size, VOLUME_OVERLAP))
    done, diffused = 0, 0

    def predict(patches: torch.Tensor) -> torch.Tensor:
        nonlocal done, diffused
        if cancel is not None and cancel():
            raise Cancelled()
        with inference_autocast(torch_device):
            mean, std, n = card.family.sample(network, scheduler, patches, ensemble, generator)
        diffused += n
        done += len(patches)
        if progress is not None:
            progress("inference", done, total)
        return torch.from_numpy(np.concatenate([mean, std], axis=1)).to(patches.device)

    volume = torch.from_numpy(np.ascontiguousarray(stack[None, None])).to(torch_device)
    blended = sliding_window_inference(volume, patch_size, predict, VOLUME_OVERLAP, "gaussian", batch_size)[0].cpu().numpy()
    classes = network.num_classes
    # [classes, slices, rows, cols] -> [slices, classes, rows, cols]
    probability, spread = (np.ascontiguousarray(part.swapaxes(0, 1)) for part in (blended[:classes], blended[classes:]))
    return probability, spread, stack.shape[0] if diffused else 0, total


def gpu_batch_size(slice_shape, ensemble: int, network: torch.nn.Module, device: torch.device, budget: float = 0.5) -> int:
    """Slices per batch that fit in ``budget`` of the GPU's free memory: a heuristic of
    64 float32 activations of the first level's width per pixel and ensemble member (the
    U-Nets' peak); an out-of-memory error still falls back (``smaller_batch_after_oom``)."""
    free, _ = torch.cuda.mem_get_info(device)
    width = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).out_channels
    per_slice = 64 * 4 * width * ensemble * int(np.prod(slice_shape))
    return int(max(1, min(256, budget * free // per_slice)))


def smaller_batch_after_oom(batch_size: int, attempted: int) -> int:
    """Half the batch that ran out of GPU memory; a single slice that does not fit is an error."""
    torch.cuda.empty_cache()
    if attempted <= 1:
        raise VerdiffError("the GPU ran out of memory on a single slice; choose the CPU device or a smaller ensemble")
    return max(1, attempted // 2)


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
