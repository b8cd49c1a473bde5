"""One training case, as the samplers draw from it (its own module: a run from a case cache
needs it without the image readers of ``datasets``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    """One labelled image as normalised sagittal slices [S, H, W] (float32 in [0, 1]) and
    product label maps [S, H, W] (uint8: 0 background, 1..K the product's labels).
    ``slice_spacing_mm``: the distance between its slices (2.5D sampling places the
    neighbouring slices by it); None where unknown."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    slice_spacing_mm: float | None = None
