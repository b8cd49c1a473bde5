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
with probability 0.5 and a gamma in [0.7, 1.5] always), ``paper`` the paper's set, ``none``,
and ``any-contrast``: the paper's geometry plus scaling, and the contrast and resolution
randomisation below, for models that must segment MR of any contrast and scanner, and ``ct``:
its geometry and resolution loss without the contrast randomisation (HU are calibrated).

Contrast and resolution randomisation (``any-contrast``; issue 16, "MR of any contrast").
The development MR is one scanner's water-fat contrast; users bring T1, T2, STIR and
fat-suppressed spin echo, often thick-sliced. No single intensity mapping turns one into
the other (in T1 discs are dark and marrow bright, in T2 discs are bright), so the network
is shown the anatomy under random tissue-to-intensity maps (the idea of SynthSeg,
Billot et al. 2023, applied to real images) and random resolution loss. Decided here, each
on the normalised [0, 1] image after cropping, in this order, each with its own probability:

- resolution: blur along one random axis (Gaussian sigma 0.5-2 px), or a block average of
  2-4 px along it and back (a thick slice reformatted into this plane);
- bias field: multiply by ``exp(f)``, ``f`` a 4-knot-per-axis random grid smoothly
  upsampled, peak |f| up to 0.4 (coil shading of surface-coil spine MR);
- tissue curve: a lookup table through 6 knots on [0, 1]: increasing (a random monotonic
  curve) or with random values (non-monotonic: tissues may swap order), cubic-interpolated
  and clipped; with its own probability the image is inverted (1 - x), and a gamma in
  [0.5, 2.0] follows;
- rescale to [0, 1] by the 0.5 and 99.5 percentiles, as inference normalises;
- Gaussian noise with sigma up to 0.08, then clipped to [0, 1].

Thick sagittal slices (partial volume across the slice axis) need the neighbouring slices:
``SliceSampler`` averages 3-5 adjacent slices with probability ``slab_p`` before anything
else (``sampler`` docstring). The geometric part of ``any-contrast`` also scales the
anatomy by 0.8-1.25 (fields of view and patient sizes differ between scanners).
2.5D samples (``preparation`` decision 4): the image may be [C, rows, cols], the slice and its
neighbouring slices as channels. One sample's channels are one piece of anatomy, so each
transform is drawn once and applied to every channel alike: ``spatial`` warps every channel
with the one coordinate map; ``intensity(..., channels=True)`` blurs or block-averages along
one in-plane axis of every channel, multiplies all by one bias field, maps all through one
tissue curve, and takes one contrast mean and one pair of rescaling percentiles over all
channels (noise stays independent per pixel, as it is in a scan). A single channel [1, rows,
cols] gives, bit for bit, what the [rows, cols] slice gives with the same generator.
Reproducibility: every random number comes from the ``numpy.random.Generator`` passed
in; the sampler gives each sample its own generator seeded from the run's seed (35 by
default), so a sample does not depend on the process, rank or resume point that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.ndimage as ndi
from scipy.interpolate import CubicSpline


@dataclass(frozen=True)
class Warp:
    """One drawn geometric transform of a [rows, cols] slice (identity by default)."""

    angle_deg: float = 0.0  # positive: counter-clockwise as displayed (rows downwards)
    shift_px: tuple[float, float] = (0.0, 0.0)  # rows, cols: where the content moves
    displacement: np.ndarray | None = None  # [2, rows, cols] extra sampling offsets in px
    scale: float = 1.0  # > 1 enlarges the content about the centre

    @property
    def is_identity(self) -> bool:
        return self.angle_deg == 0 and self.shift_px == (0.0, 0.0) and self.displacement is None and self.scale == 1.0


def warp(image: np.ndarray, labels: np.ndarray, transform: Warp) -> tuple[np.ndarray, np.ndarray]:
    """Resample a slice [rows, cols] (or its channels [C, rows, cols], each alike) and its
    label map [rows, cols] through ``transform`` in one interpolation."""
    if transform.is_identity:
        return image, labels
    rows, cols = labels.shape
    grid_r, grid_c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    centre_r, centre_c = (rows - 1) / 2, (cols - 1) / 2
    r = grid_r - centre_r - transform.shift_px[0]
    c = grid_c - centre_c - transform.shift_px[1]
    angle = np.deg2rad(transform.angle_deg)
    r, c = r / transform.scale, c / transform.scale
    source_r = np.cos(angle) * r + np.sin(angle) * c + centre_r  # inverse rotation: where each output pixel comes from
    source_c = -np.sin(angle) * r + np.cos(angle) * c + centre_c
    if transform.displacement is not None:
        source_r = source_r + transform.displacement[0]
        source_c = source_c + transform.displacement[1]
    coordinates = np.stack([source_r, source_c])
    if image.ndim == 3:
        image = np.stack([ndi.map_coordinates(channel, coordinates, order=1, mode="nearest").astype(np.float32, copy=False) for channel in image])
    else:
        image = ndi.map_coordinates(image, coordinates, order=1, mode="nearest").astype(np.float32, copy=False)
    labels = ndi.map_coordinates(labels, coordinates, order=0, mode="constant", cval=0).astype(labels.dtype, copy=False)
    return image, labels


ELASTIC_NOISE_PX = 5.0  # the smoothing's width on the coarse grid of ``elastic_displacement``


def elastic_displacement(shape: tuple[int, int], max_px: float, sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement [2, rows, cols] whose largest magnitude is ``max_px``: white
    noise smoothed by a Gaussian of ``sigma_px``.

    Decided (session 16, for the sample builders that set a GPU's pace): the noise is drawn on
    a grid ``f = sigma_px // ELASTIC_NOISE_PX`` times coarser, smoothed there by ``sigma_px / f``
    and interpolated linearly back: the same correlation length from 1/f^2 of the noise and 1/f
    of the filter's taps (f = 4 at the paper's 20 px: a 600 x 250 X-ray slice's field in 2.5 ms
    instead of 63 on the loaded development machine). The interpolation smooths a little more (a linear kernel over f px)."""
    factor = max(1, int(sigma_px // ELASTIC_NOISE_PX))
    coarse_shape = tuple(-(-n // factor) + 1 for n in shape)
    field = np.stack([ndi.gaussian_filter(rng.standard_normal(coarse_shape), sigma_px / factor, mode="reflect") for _ in range(2)]).astype(np.float32)
    if factor > 1:  # linearly back to the fine grid: columns on the coarse rows, then rows (no BLAS:
        # its threads, one set per sample builder, contend on a shared machine)
        lower, weight = _linear_interpolation(shape[1], factor)
        field = field[:, :, lower] * (1 - weight) + field[:, :, lower + 1] * weight
        lower, weight = _linear_interpolation(shape[0], factor)
        field = field[:, lower] * (1 - weight[:, None]) + field[:, lower + 1] * weight[:, None]
    peak = float(np.sqrt((field**2).sum(axis=0)).max())
    return field * (max_px / peak) if peak > 0 else field


def _linear_interpolation(n: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine pixel i at i / ``factor`` on the coarse grid: its lower coarse neighbour and the weight of the upper one."""
    position = np.arange(n) / factor
    lower = np.floor(position).astype(int)
    return lower, (position - lower).astype(np.float32)


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
    # geometry and contrast randomisation of ``any-contrast`` (module docstring); off by default
    scale: tuple[float, float] = (1.0, 1.0)
    scale_p: float = 0.0
    slab_p: float = 0.0  # SliceSampler: average 3-5 neighbouring slices (a thick slice)
    resolution_p: float = 0.0
    bias_p: float = 0.0
    bias_max: float = 0.4
    curve_p: float = 0.0
    curve_monotonic_p: float = 0.5  # of the curves drawn, this share is monotonic
    invert_p: float = 0.0
    noise_p: float = 0.0
    noise_max: float = 0.08
    # after resolution, bias, curve or inversion: back to [0, 1] by percentiles, as MR and X-ray
    # inference normalise; off for CT, whose window normalisation keeps HU where they were
    rescale_randomised: bool = True

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
        scale = 1.0
        if self.scale_p and rng.random() < self.scale_p:
            scale = float(np.exp(rng.uniform(*np.log(self.scale))))  # log-uniform: as likely to grow as to shrink
        return Warp(angle, shift, displacement, scale)

    def spatial(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One drawn warp of a slice [rows, cols] or of all its channels [C, rows, cols] alike."""
        return warp(image, labels, self.draw_warp(labels.shape, rng))

    def intensity(self, image: np.ndarray, rng: np.random.Generator, channels: bool = False) -> np.ndarray:
        """Resolution, bias field, tissue curve and inversion (``any-contrast`` only), contrast
        about the mean, gamma, rescale and noise; the result stays in [0, 1]. Works on 2D
        slices and 3D patches alike; ``channels``: the first axis holds one sample's channels
        (a 2.5D slice [C, rows, cols]), each transformed alike (module docstring)."""
        image = np.clip(image, 0.0, 1.0)
        spatial_shape = image.shape[1:] if channels else image.shape
        randomised = False
        if self.resolution_p and rng.random() < self.resolution_p:
            image, randomised = lower_resolution(image, rng, channels), True
        if self.bias_p and rng.random() < self.bias_p:
            image, randomised = image * bias_field(spatial_shape, self.bias_max, rng), True
        if self.curve_p and rng.random() < self.curve_p:
            image, randomised = tissue_curve(image, rng.random() < self.curve_monotonic_p, rng), True
        if self.invert_p and rng.random() < self.invert_p:
            image, randomised = 1.0 - image, True
        if randomised and self.rescale_randomised:
            image = rescale_percentiles(image)
        if self.contrast_p and rng.random() < self.contrast_p:
            mean = float(image.mean())
            image = np.clip(mean + (image - mean) * rng.uniform(*self.contrast), 0.0, 1.0)
        if self.gamma_p and rng.random() < self.gamma_p:
            image = image ** rng.uniform(*self.gamma)
        if self.noise_p and rng.random() < self.noise_p:
            image = np.clip(image + rng.normal(0.0, rng.uniform(0, self.noise_max), image.shape), 0.0, 1.0)
        return image.astype(np.float32, copy=False)


def lower_resolution(image: np.ndarray, rng: np.random.Generator, channels: bool = False) -> np.ndarray:
    """Blur along one random axis, or block-average 2-4 px along it and interpolate back;
    ``channels``: the first axis holds channels, the axis is drawn among the others."""
    axis = int(rng.integers(image.ndim - 1)) + 1 if channels else int(rng.integers(image.ndim))
    if rng.random() < 0.5:
        return ndi.gaussian_filter1d(image, rng.uniform(0.5, 2.0), axis=axis, mode="nearest")
    block = int(rng.integers(2, 5))
    n = image.shape[axis]
    padded = np.pad(image, [(0, (-n) % block if a == axis else 0) for a in range(image.ndim)], mode="edge")
    shape = list(padded.shape)
    shape[axis : axis + 1] = [shape[axis] // block, block]
    coarse = padded.reshape(shape).mean(axis=axis + 1)
    positions = (np.arange(n) + 0.5) / block - 0.5  # centre of each fine pixel on the coarse axis
    low = np.floor(positions).clip(0, coarse.shape[axis] - 1).astype(int)
    high = (low + 1).clip(0, coarse.shape[axis] - 1)
    weight = (positions - low).clip(0, 1).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return np.take(coarse, low, axis=axis) * (1 - weight) + np.take(coarse, high, axis=axis) * weight


def bias_field(shape, max_amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(f), f from a 4-knot-per-axis random grid."""
    knots = rng.uniform(-1.0, 1.0, size=(4,) * len(shape))
    field = ndi.zoom(knots, [n / 4 for n in shape], order=3, mode="nearest", grid_mode=True)[tuple(slice(0, n) for n in shape)]
    peak = float(np.abs(field).max())
    return np.exp(field * (rng.uniform(0, max_amplitude) / peak if peak > 0 else 0.0))


def tissue_curve(image: np.ndarray, monotonic: bool, rng: np.random.Generator) -> np.ndarray:
    """A random lookup table through 6 knots: increasing, or of random values (tissues may
    swap their order), cubic between knots, clipped to [0, 1]."""
    knots = np.linspace(0.0, 1.0, 6)
    values = np.sort(rng.random(6)) if monotonic else rng.random(6)
    if monotonic:
        values = (values - values[0]) / max(values[-1] - values[0], 1e-3)
    table_x = np.linspace(0.0, 1.0, 256)
    # piecewise linear keeps a monotonic curve monotonic; a spline makes the other smooth
    table = np.interp(table_x, knots, values) if monotonic else CubicSpline(knots, values, bc_type="natural")(table_x)
    return np.interp(image, table_x, np.clip(table, 0.0, 1.0))


def rescale_percentiles(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Back to [0, 1] by the percentiles inference normalises with (a flat image stays flat)."""
    lo, hi = np.percentile(image, [low, high])
    if hi - lo < 1e-6:
        return np.clip(image, 0.0, 1.0)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


PAPER = Augmentation(
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
)

PRESETS = {
    "light": Augmentation(rotation_deg=15.0, rotation_p=0.5, gamma=(0.7, 1.5), gamma_p=1.0),
    "paper": PAPER,
    "none": Augmentation(),
    # the paper's geometry (deformed less often), then the contrast and resolution randomisation
    "any-contrast": replace(
        PAPER,
        elastic_p=0.3,
        contrast_p=0.3,
        gamma=(0.5, 2.0),
        scale=(0.8, 1.25),
        scale_p=0.5,
        slab_p=0.25,
        resolution_p=0.25,
        bias_p=0.4,
        curve_p=0.6,
        curve_monotonic_p=0.4,
        invert_p=0.25,
        noise_p=0.4,
    ),
    # CT (session 14, issue 15): the paper's geometry, scaling and the resolution loss of
    # ``any-contrast`` (thick slabs across the sagittal axis, blur or block averaging in-plane: a
    # 3 mm abdominal CT reformatted to 1.5 mm is what the held-out CT looks like), mild noise,
    # contrast and gamma; no bias field, tissue curve or inversion, and no percentile rescale:
    # CT is calibrated in HU and normalised by a fixed window.
    "ct": replace(
        PAPER,
        elastic_p=0.3,
        contrast_p=0.3,
        scale=(0.8, 1.25),
        scale_p=0.5,
        slab_p=0.25,
        resolution_p=0.3,
        noise_p=0.3,
        noise_max=0.03,
        rescale_randomised=False,
    ),
}
