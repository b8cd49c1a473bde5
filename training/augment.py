"""Data augmentation of one sagittal slice and its label map, with NumPy and SciPy only.

Paper 001 (Sec. 3.2): random rotation from -30 to 30 degrees, random shift by 1-5 %,
random elastic deformation and random contrast adjustment, with one random state
(seed 35) for all methods. Where it is vague we decided, and say so here:

- each transform is applied with probability 0.5 (the paper says "randomly" only), so half
  of the samples keep the anatomy's own pose, as at inference;
- shift: each axis independently by 1-5 % of the slice's size on that axis, random sign;
- elastic deformation: white noise smoothed by a Gaussian of ``elastic_sigma_px`` (20 px)
  per axis, scaled so its largest displacement is uniform in [0, ``elastic_px``] (4 px):
  a gentle bend (local stretch below ~20 %), not a new vertebral shape;
- contrast: intensities stretched about the slice's mean by a factor in [0.75, 1.25], and
  a gamma in [0.7, 1.5]; both keep the normalised range [0, 1];
- rotation, shift and deformation are composed into one coordinate map and resampled
  once (linear for the image, nearest neighbour for labels, outside = background), so an
  augmented slice is interpolated only once.

Presets: ``light`` is what the bundled models were trained with (rotation +-15 degrees
with probability 0.5 and a gamma in [0.7, 1.5] always), ``paper`` the paper's set, ``none``.
Reproducibility: every random number comes from the ``numpy.random.Generator`` passed
in; the sampler gives each sample its own generator seeded from the run's seed (35 by
default), so a sample does not depend on the process, rank or resume point that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi


@dataclass(frozen=True)
class Warp:
    """One drawn geometric transform of a [rows, cols] slice (identity by default)."""

    angle_deg: float = 0.0  # positive: counter-clockwise as displayed (rows downwards)
    shift_px: tuple[float, float] = (0.0, 0.0)  # rows, cols: where the content moves
    displacement: np.ndarray | None = None  # [2, rows, cols] extra sampling offsets in px

    @property
    def is_identity(self) -> bool:
        return self.angle_deg == 0 and self.shift_px == (0.0, 0.0) and self.displacement is None


def warp(image: np.ndarray, labels: np.ndarray, transform: Warp) -> tuple[np.ndarray, np.ndarray]:
    """Resample a slice and its label map through ``transform`` in one interpolation."""
    if transform.is_identity:
        return image, labels
    rows, cols = image.shape
    grid_r, grid_c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    centre_r, centre_c = (rows - 1) / 2, (cols - 1) / 2
    r = grid_r - centre_r - transform.shift_px[0]
    c = grid_c - centre_c - transform.shift_px[1]
    angle = np.deg2rad(transform.angle_deg)
    source_r = np.cos(angle) * r + np.sin(angle) * c + centre_r  # inverse rotation: where each output pixel comes from
    source_c = -np.sin(angle) * r + np.cos(angle) * c + centre_c
    if transform.displacement is not None:
        source_r = source_r + transform.displacement[0]
        source_c = source_c + transform.displacement[1]
    coordinates = np.stack([source_r, source_c])
    image = ndi.map_coordinates(image, coordinates, order=1, mode="nearest").astype(np.float32, copy=False)
    labels = ndi.map_coordinates(labels, coordinates, order=0, mode="constant", cval=0).astype(labels.dtype, copy=False)
    return image, labels


def elastic_displacement(shape: tuple[int, int], max_px: float, sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement [2, rows, cols] whose largest magnitude is ``max_px``."""
    field = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect") for _ in range(2)])
    peak = float(np.sqrt((field**2).sum(axis=0)).max())
    return field * (max_px / peak) if peak > 0 else field


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of each transform; ``spatial`` runs before cropping,
    ``intensity`` after (see the module docstring for the defaults' reasons)."""

    rotation_deg: float = 0.0
    rotation_p: float = 0.0
    shift_fraction: tuple[float, float] = (0.0, 0.0)
    shift_p: float = 0.0
    elastic_px: float = 0.0
    elastic_sigma_px: float = 20.0
    elastic_p: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    contrast_p: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    gamma_p: float = 0.0

    def draw_warp(self, shape: tuple[int, int], rng: np.random.Generator) -> Warp:
        """Draw the geometric part for a slice of ``shape``."""
        angle, shift, displacement = 0.0, (0.0, 0.0), None
        if self.rotation_p and rng.random() < self.rotation_p:
            angle = float(rng.uniform(-self.rotation_deg, self.rotation_deg))
        if self.shift_p and rng.random() < self.shift_p:
            fractions = rng.uniform(*self.shift_fraction, size=2) * rng.choice([-1.0, 1.0], size=2)
            shift = (float(fractions[0] * shape[0]), float(fractions[1] * shape[1]))
        if self.elastic_p and rng.random() < self.elastic_p:
            displacement = elastic_displacement(shape, rng.uniform(0, self.elastic_px), self.elastic_sigma_px, rng)
        return Warp(angle, shift, displacement)

    def spatial(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return warp(image, labels, self.draw_warp(image.shape, rng))

    def intensity(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Contrast about the mean, then gamma; the result stays in [0, 1]."""
        image = np.clip(image, 0.0, 1.0)
        if self.contrast_p and rng.random() < self.contrast_p:
            mean = float(image.mean())
            image = np.clip(mean + (image - mean) * rng.uniform(*self.contrast), 0.0, 1.0)
        if self.gamma_p and rng.random() < self.gamma_p:
            image = image ** rng.uniform(*self.gamma)
        return image.astype(np.float32, copy=False)


PRESETS = {
    "light": Augmentation(rotation_deg=15.0, rotation_p=0.5, gamma=(0.7, 1.5), gamma_p=1.0),
    "paper": Augmentation(
        rotation_deg=30.0,
        rotation_p=0.5,
        shift_fraction=(0.01, 0.05),
        shift_p=0.5,
        elastic_px=4.0,
        elastic_sigma_px=20.0,
        elastic_p=0.5,
        contrast=(0.75, 1.25),
        contrast_p=0.5,
        gamma=(0.7, 1.5),
        gamma_p=0.5,
    ),
    "none": Augmentation(),
}
