"""What the third dimension (and the spine's shape) adds after sampling (issue 16, "use the volume").

Steps on the sagittal grid (slices, rows, columns) before results are mapped back onto the
input grid, each switched on per model by its card's ``postprocess`` section, where it was
measured to help (figures in ``docs/experiments.md``):

- ``probability_slice_sigma_mm``: the ensemble's mean probability is averaged across
  neighbouring sagittal slices (a Gaussian of this sigma in mm along the slice axis only)
  before it is thresholded. Slices are segmented one by one, so a body's edge flickers
  from slice to slice; anatomy does not change in 1.5 mm. In mm, not slices: on 4 mm
  clinical slices the same setting barely smooths (0.4 slice), as it should.
- ``acquired_slice_threshold`` (issue 15, session 43), after that averaging: where a
  volume's slices were interpolated linearly between thicker acquired ones
  (``acquired_slices``), an acquired slice is labelled where its probability is above this
  threshold, and each slice between two acquired ones where its own is above 0.5 or either
  neighbour is labelled (``probability_on_acquired_slices``). Why: that is how the
  development MR's reference labels were made. Its 1 mm slices are interpolated from slices
  acquired 4 mm apart (slices 0, 4, ..., 76), and in all 40 subjects every interpolated
  slice's label is exactly the union of its two acquired neighbours' labels (2280 of 2280
  slices). A model segmenting slice by slice cannot tell the two kinds apart and draws them
  alike: too much on the acquired slices (precision 0.86 on 8 training subjects) and too
  little between them (recall 0.905). Clinically it is the cautious reading too: between
  two acquired slices nothing was measured, and the body may reach as far as either shows
  it. A volume acquired on its own slices (a CT, a clinical MR at its native thickness)
  shows no such signature and is left as it is. The threshold was chosen on training
  subjects (docs/levels.md, session 43).
- ``uncertainty_sigma_mm`` ([along the slices, in-plane]): the uncertainty volume (the
  samples' standard deviation) is averaged with a Gaussian of these sigmas in mm. With the
  default 2 samples the per-voxel spread is a noisy estimate of how much the samples
  disagree there; neighbouring voxels share nearly all their context, so averaging over
  them estimates the same disagreement from more evidence (it ranks the wrong voxels
  better: uncertainty AUROC on the held-out MR 0.864 -> 0.929). The reliability estimate
  (``reliability``) is computed before either smoothing, as its thresholds were calibrated.

and on the label map:

- ``spine_bridge_mm``: keep the spine, drop what lies apart from it. Connected components
  (26-connected in a volume, 8 in a plane) are grown from the largest one: a component is
  kept when it comes within ``spine_bridge_mm`` of what is already kept, until nothing
  more is added. Vertebral bodies are separate components, a disc (about 10 mm in the
  lumbar spine, less above) apart, so the chain of bodies survives while false
  structures far from it (bowel, skin folds, the image's edge) go. Distances are in mm on
  the grid's own spacing (pixels for images without spacing).
- ``fill_holes``: fill holes of each label in each sagittal slice (a body's marrow is
  bone, whatever its signal).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .inferers.ensemble import foreground_probability

MAX_ROUNDS = 64  # a chain of 26 bodies needs 25 rounds; more means something else is wrong
# acquired slices (module docstring): the second difference along the slices of a linearly
# interpolated volume is zero between acquired slices (up to rounding), so its mean on the
# acquired slices is many times its mean on any other phase of the period (5.1-8.6 in the 40 VB3
# subjects); a volume acquired on its own slices gives about 1 (1.01-1.06 for the CTs and the
# small MR on every axis), and so does one whose thick slices were repeated, not interpolated
# (the thick-4mm suite, 1.06: its second difference is large on both sides of every block edge)
INTERPOLATION_RATIO = 3.0
ACQUIRED_PERIODS = range(2, 9)  # 2-8 grid slices between acquired ones (e.g. 4 mm slices on a 1 mm or 0.5 mm grid)
MIN_ACQUIRED_SLICES = 3  # a period is only believed where it repeats


def acquired_slices(stack: np.ndarray) -> np.ndarray | None:
    """The indices of the slices (first axis) of ``stack`` a volume was acquired on, where its
    other slices were interpolated linearly between them; None where they were not (module
    docstring, ``acquired_slice_threshold``). Of every period in ``ACQUIRED_PERIODS`` and
    phase, the one whose slices' mean absolute second difference along the slices is the
    largest multiple of the busiest other phase's, if that is ``INTERPOLATION_RATIO`` or more."""
    if stack.ndim != 3 or stack.shape[0] < 3:
        return None
    values = stack.astype(np.float32, copy=False)
    second = np.abs(values[:-2] - 2 * values[1:-1] + values[2:]).mean(axis=(1, 2))  # slices 1..n-2
    index = np.arange(1, stack.shape[0] - 1)
    best, best_ratio = None, 0.0
    for period in ACQUIRED_PERIODS:
        if len(index) < MIN_ACQUIRED_SLICES * period:  # too few slices of some phase
            continue
        means = np.array([second[index % period == phase].mean() for phase in range(period)])
        for phase in range(period):
            busiest_other = float(np.delete(means, phase).max())
            if means[phase] <= 0:
                continue
            ratio = means[phase] / busiest_other if busiest_other > 0 else np.inf
            if ratio > best_ratio:
                best, best_ratio = (period, phase), ratio
    if best is None or best_ratio < INTERPOLATION_RATIO:
        return None
    return np.arange(best[1], stack.shape[0], best[0])


def probability_on_acquired_slices(probability: np.ndarray, acquired: np.ndarray, threshold: float) -> np.ndarray:
    """[slices, classes, rows, cols] mean probability as the reference labels of a volume
    interpolated between its ``acquired`` slices are drawn (module docstring,
    ``acquired_slice_threshold``): on an acquired slice, zero where its foreground probability
    (``foreground_probability``) is ``threshold`` or less; on each slice between two acquired
    ones, per voxel and class the largest of its own and theirs. Thresholded at 0.5
    (``labels_from_probability``), an acquired slice keeps what is above ``threshold`` and an
    interpolated one its own labels united with its two neighbours' (where they label a voxel
    differently, the lower class: the VB3 labels never do); slices before the first acquired
    one or after the last are left as they are. As a probability, not labels, so that the
    results' sub-voxel boundaries on the input grid (``pipeline.labels_and_uncertainty``) keep
    the union too."""
    result = probability.copy()
    on = result[acquired]
    on[np.broadcast_to((foreground_probability(on) <= threshold)[:, None], on.shape)] = 0.0
    result[acquired] = on
    for first, last in zip(acquired[:-1], acquired[1:]):
        result[first + 1 : last] = np.maximum(result[first + 1 : last], np.maximum(result[first], result[last]))
    return result


def unite_interpolated_slices(probability: np.ndarray, stack: np.ndarray, settings: dict | None) -> np.ndarray:
    """``probability_on_acquired_slices`` where the card asks for it
    (``acquired_slice_threshold``) and ``stack``, the network's input slices, shows them
    interpolated (``acquired_slices``); else ``probability`` itself."""
    threshold = (settings or {}).get("acquired_slice_threshold")
    acquired = acquired_slices(stack) if threshold else None
    if acquired is None:
        return probability
    return probability_on_acquired_slices(probability, acquired, float(threshold))


def keep_spine(labels: np.ndarray, spacing, bridge_mm: float) -> np.ndarray:
    """``labels`` with every component farther than ``bridge_mm`` from the spine chain set to 0
    (module docstring). ``spacing`` per numpy axis."""
    foreground = labels > 0
    structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    components, count = ndi.label(foreground, structure)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = np.zeros(count + 1, bool)
    kept[int(sizes.argmax())] = True
    # one bounding box around all foreground keeps the distance transforms small
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(foreground))
    local = components[box]
    # Only voxels within bridge_mm of the kept set matter, and they lie in the kept set's box
    # grown by that many voxels: the distance transform runs there (every kept voxel is inside,
    # so the distances it gives are exact), seconds less on a CT.
    reach = [int(np.ceil(bridge_mm / float(step))) + 1 for step in spacing]
    for _ in range(MAX_ROUNDS):
        kept_voxels = np.nonzero(kept[local])
        near_box = tuple(slice(max(int(i.min()) - r, 0), int(i.max()) + r + 1) for i, r in zip(kept_voxels, reach))
        near_local = local[near_box]
        distance = ndi.distance_transform_edt(~kept[near_local], sampling=spacing)
        near = np.unique(near_local[(distance <= bridge_mm) & (near_local > 0)])
        if kept[near].all():
            break
        kept[near] = True
    return np.where(kept[components], labels, 0).astype(labels.dtype)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Each label's holes filled in every 2D slice along the first axis (a plane: the plane)."""
    out = labels.copy()
    planes = out[None] if out.ndim == 2 else out
    for index in range(planes.shape[0]):
        plane = planes[index]
        for value in np.unique(plane):
            if value:
                filled = ndi.binary_fill_holes(plane == value)
                plane[filled & (plane == 0)] = value
    return out


def smooth_probability_across_slices(probability: np.ndarray, slice_spacing_mm: float, settings: dict | None) -> np.ndarray:
    """[slices, classes, rows, cols] mean probability averaged across neighbouring slices
    (``probability_slice_sigma_mm``); unchanged without the setting or for a single slice."""
    sigma_mm = float((settings or {}).get("probability_slice_sigma_mm") or 0)
    if sigma_mm <= 0 or probability.shape[0] < 2:
        return probability
    return ndi.gaussian_filter1d(probability, sigma_mm / slice_spacing_mm, axis=0, mode="nearest")


def smooth_uncertainty(uncertainty: np.ndarray, spacing, settings: dict | None) -> np.ndarray:
    """[slices, rows, cols] uncertainty averaged over neighbouring voxels (``uncertainty_sigma_mm``:
    sigma along the slices and in-plane, in mm; ``spacing`` per numpy axis). A single slice
    (an X-ray) is smoothed in-plane only."""
    sigmas_mm = (settings or {}).get("uncertainty_sigma_mm")
    if not sigmas_mm:
        return uncertainty
    along, in_plane = (float(x) for x in sigmas_mm)
    sigma = [along / spacing[0] if uncertainty.shape[0] > 1 else 0.0, in_plane / spacing[1], in_plane / spacing[2]]
    if not any(sigma):
        return uncertainty
    return ndi.gaussian_filter(uncertainty, sigma, mode="nearest").astype(uncertainty.dtype)


def postprocess(labels: np.ndarray, spacing, settings: dict | None) -> np.ndarray:
    """Apply a card's ``postprocess`` settings (``spine_bridge_mm``, ``fill_holes``) to a label map."""
    if not settings:
        return labels
    if settings.get("spine_bridge_mm"):
        labels = keep_spine(labels, spacing, float(settings["spine_bridge_mm"]))
    if settings.get("fill_holes"):
        labels = fill_holes(labels)
    return labels
