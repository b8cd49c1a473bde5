"""Intensity normalisation and padding, shared by inference and training.

The model card names the normalisation; both kinds map intensities to [0, 1]:
- ``window``: a fixed window in the image's units (CT in Hounsfield units);
- ``percentile``: the image's own low/high percentiles (MR and X-ray, whose units are arbitrary).
"""

from __future__ import annotations

import numpy as np


def intensity_range(values: np.ndarray, normalisation: dict) -> tuple[float, float]:
    """The (low, high) intensities that map to 0 and 1 for this image."""
    kind = normalisation["kind"]
    if kind == "window":
        return float(normalisation["low"]), float(normalisation["high"])
    if kind == "percentile":
        flat = values.ravel()
        stride = max(1, flat.size // 2_000_000)  # a strided sample is plenty for percentiles
        low, high = np.percentile(flat[::stride], [normalisation["low"], normalisation["high"]])
        return float(low), float(max(high, low + 1e-6))
    raise ValueError(f"unknown normalisation kind {kind!r}")


def normalise(stack: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((stack.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def pad_to_multiple(array: np.ndarray, multiple: int, value: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes at their end up to a multiple (never squash); returns the
    padded array and the original (rows, columns) to crop back to."""
    rows, cols = array.shape[-2:]
    pad_r, pad_c = -rows % multiple, -cols % multiple
    if pad_r or pad_c:
        widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_r), (0, pad_c)]
        array = np.pad(array, widths, constant_values=value)
    return array, (rows, cols)
