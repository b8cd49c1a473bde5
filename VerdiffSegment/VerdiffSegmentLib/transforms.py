"""Intensity normalisation, padding and the 2.5D input channels, shared by inference and training
(numpy only: training from a cache runs where SimpleITK is not installed).

The model card names the normalisation; both kinds map intensities to [0, 1]:
- ``window``: a fixed window in the image's units (CT in Hounsfield units);
- ``percentile``: the image's own low/high percentiles (MR and X-ray, whose units are arbitrary).
"""

from __future__ import annotations

import numpy as np

BIAS_FIELDS = (None, "n4")  # normalisation["bias_field"]: none, or N4 (``preparation`` decision 6)


def bias_field_of(normalisation: dict, where: str = "normalisation") -> str | None:
    """``normalisation``'s bias-field correction (``BIAS_FIELDS``), or a ValueError naming ``where``;
    the cards and the training recipes check it alike."""
    value = normalisation.get("bias_field")
    if value not in BIAS_FIELDS:
        raise ValueError(f"{where}.bias_field must be one of {', '.join(map(str, BIAS_FIELDS))}, got {value!r}")
    return value


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


def context_offsets(context_slices: int, slice_spacing_mm: float, distance_mm: float) -> np.ndarray:
    """Offsets along the slice axis, in slices, of the 2k + 1 input channels: j x
    ``distance_mm`` / ``slice_spacing_mm`` for j = -k..k (``preparation`` decision 4); [0.0] for k = 0."""
    k = int(context_slices)
    return np.arange(-k, k + 1, dtype=np.float64) * (float(distance_mm) / float(slice_spacing_mm))


def slice_at(stack: np.ndarray, position: float) -> np.ndarray:
    """The [rows, columns] image at a fractional slice ``position`` of ``stack`` [slices, rows,
    columns]: linear between the two nearest slices, the first or last slice beyond the ends
    (the edge replicated); a whole position is that slice itself, bit for bit."""
    position = min(max(float(position), 0.0), stack.shape[0] - 1.0)
    low = int(np.floor(position))
    weight = position - low
    if weight == 0.0:
        return stack[low]
    return stack[low] * (1.0 - weight) + stack[low + 1] * weight


def slice_channels(stack: np.ndarray, indices, offsets) -> np.ndarray:
    """The network input [len(indices), len(offsets), rows, columns] of slices ``indices`` of
    ``stack``: channel c of slice i is ``slice_at(stack, i + offsets[c])`` (``preparation`` decision 4). With
    offsets [0.0] it is ``stack[indices][:, None]``, the 1-channel input."""
    return np.stack([np.stack([slice_at(stack, index + offset) for offset in offsets]) for index in indices]).astype(stack.dtype, copy=False)
