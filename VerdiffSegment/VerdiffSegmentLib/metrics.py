"""Overlap metrics on label maps (numpy arrays of any dimension)."""

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
