"""Overlap and boundary metrics on masks (numpy arrays of any dimension)."""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Binary Dice 2|X n Y| / (|X| + |Y|); 1.0 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, truth).sum() / total)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Binary IoU TP / (TP + FP + FN); 1.0 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    union = np.logical_or(prediction, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, truth).sum() / union)


def _surfaces(prediction: np.ndarray, truth: np.ndarray, spacing):
    """Boundary voxels of both masks, cropped to their joint bounding box plus a margin
    (exact: the nearest boundary voxel of one mask is always inside that box)."""
    import scipy.ndimage as ndi

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    spacing = np.ones(prediction.ndim) if spacing is None else np.asarray(spacing, float)
    both = prediction | truth
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(both))
    prediction, truth = prediction[box], truth[box]
    cross = ndi.generate_binary_structure(prediction.ndim, 1)
    # A voxel is on the boundary if a face neighbour is outside the mask (outside the image counts as outside).
    surface = [m & ~ndi.binary_erosion(m, cross, border_value=0) for m in (prediction, truth)]
    return surface[0], surface[1], spacing


def _surface_distances(prediction, truth, spacing):
    """Distances (in spacing units) from each boundary voxel of one mask to the other's boundary."""
    import scipy.ndimage as ndi

    surface_p, surface_t, spacing = _surfaces(prediction, truth, spacing)
    to_truth = ndi.distance_transform_edt(~surface_t, sampling=spacing)[surface_p]
    to_prediction = ndi.distance_transform_edt(~surface_p, sampling=spacing)[surface_t]
    return to_truth, to_prediction


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> float:
    """95 % Hausdorff distance between the masks' boundaries, in the units of ``spacing``
    (per array axis, numpy order; voxels if None): the larger of the two directed 95th
    percentiles (the MONAI / medpy convention). 0.0 when both are empty, inf when one is."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float("inf")
    to_truth, to_prediction = _surface_distances(prediction, truth, spacing)
    return float(max(np.percentile(to_truth, 95), np.percentile(to_prediction, 95)))


def nsd(prediction: np.ndarray, truth: np.ndarray, tolerance: float, spacing=None) -> float:
    """Normalised surface Dice at ``tolerance`` (units of ``spacing``): the fraction of both
    boundaries lying within the tolerance of the other. Boundary size is counted in
    boundary voxels (an approximation of the surface area). 1.0 when both are empty, 0.0 when one is."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return 1.0
    if not prediction.any() or not truth.any():
        return 0.0
    to_truth, to_prediction = _surface_distances(prediction, truth, spacing)
    return float(((to_truth <= tolerance).sum() + (to_prediction <= tolerance).sum()) / (to_truth.size + to_prediction.size))


def grown_bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels on every side (cut at the
    array's faces); None for an empty mask."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n)) for i, n in zip(np.nonzero(mask), mask.shape))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for separating ``positive`` from the rest: the
    Mann-Whitney probability that a random positive scores above a random negative, ties
    counting one half. None when either class is empty."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(probability: np.ndarray, truth: np.ndarray, bins: int = 10) -> float | None:
    """ECE of a foreground probability: the voxel-weighted mean over ``bins`` equal-width bins
    of |mean predicted probability - observed foreground fraction| (Guo et al. 2017, with
    the probability of the foreground class as the confidence of a binary task). None for
    no voxels."""
    probability, truth = np.asarray(probability, np.float64).ravel(), np.asarray(truth, bool).ravel()
    if probability.size == 0:
        return None
    index = np.minimum((probability * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=probability, minlength=bins)
    observed = np.bincount(index, weights=truth.astype(np.float64), minlength=bins)
    used = counts > 0
    return float(np.abs(predicted[used] - observed[used]).sum() / probability.size)
