"""Sagittal slicing that follows the image's direction matrix, and the exact way back.

Every image goes through one canonical grid before the network sees it:

- 3D: the input axis closest to patient left-right (from the direction matrix, never from
  array order) becomes the slice axis, kept at its own spacing so each input sagittal
  slice is one network slice; the axis closest to superior-inferior becomes the rows
  (running downwards, S to I) and the one closest to anterior-posterior the columns
  (A to P), both resampled to the model's in-plane spacing. Axes are only permuted and
  sign-flipped, never rotated, so oblique acquisitions are sliced along their own axes.
- 3D, isotropic (the 3D networks, ``slice_spacing_mm``): the same axes, with the slice
  axis resampled to ``slice_spacing_mm`` too, so a volume patch has the same physical
  extent per voxel on every axis (what 3D convolutions assume).
- 2D (an X-ray): the image is one slice; rows and columns stay as stored.

The grid's origin is the corner of the input's physical bounding box, so the same
anatomy stored with permuted or flipped axes gives the same grid. Results come back with
``from_sagittal_stack``: labels by nearest neighbour, probabilities and uncertainty
linearly, onto exactly the input's voxel grid.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import SimpleITK as sitk

# Patient axes in SimpleITK's LPS space: slices along L, rows towards inferior, columns towards posterior.
_LEFT, _INFERIOR, _POSTERIOR = np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, 1.0, 0])


def _direction(image: sitk.Image) -> np.ndarray:
    d = image.GetDimension()
    return np.array(image.GetDirection(), dtype=float).reshape(d, d)


def sagittal_axes(image: sitk.Image) -> tuple[int, int, int, np.ndarray]:
    """Input axes (slice, row, column) and the canonical direction matrix (columns = the
    physical directions of column, row and slice index). 3D images only."""
    direction = _direction(image)
    best = max(
        itertools.permutations(range(3)),
        key=lambda p: abs(direction[:, p[0]] @ _LEFT) + abs(direction[:, p[1]] @ _INFERIOR) + abs(direction[:, p[2]] @ _POSTERIOR),
    )
    slice_axis, row_axis, col_axis = best
    columns = []
    for axis, target in ((col_axis, _POSTERIOR), (row_axis, _INFERIOR), (slice_axis, _LEFT)):
        v = direction[:, axis]
        columns.append(v if v @ target >= 0 else -v)
    return slice_axis, row_axis, col_axis, np.stack(columns, axis=1)


def sagittal_reference(image: sitk.Image, spacing_mm: float, slice_spacing_mm: float | None = None) -> sitk.Image:
    """An empty image whose geometry is the canonical sagittal grid at ``spacing_mm`` in-plane.

    ``slice_spacing_mm``: resample the slice axis to this spacing too (the 3D networks pass
    ``spacing_mm``: an isotropic grid); None (default) keeps the input's slices."""
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    direction = _direction(image)
    if image.GetDimension() == 2:
        new_direction, new_spacing = direction, np.array([spacing_mm, spacing_mm])
        new_size = [math.ceil(size[i] * spacing[i] / spacing_mm - 1e-6) for i in range(2)]
    else:
        slice_axis, row_axis, col_axis, new_direction = sagittal_axes(image)
        slice_spacing = spacing[slice_axis] if slice_spacing_mm is None else float(slice_spacing_mm)
        new_spacing = np.array([spacing_mm, spacing_mm, slice_spacing])
        new_size = [
            math.ceil(size[col_axis] * spacing[col_axis] / spacing_mm - 1e-6),
            math.ceil(size[row_axis] * spacing[row_axis] / spacing_mm - 1e-6),
            int(size[slice_axis]) if slice_spacing_mm is None else math.ceil(size[slice_axis] * spacing[slice_axis] / slice_spacing - 1e-6),
        ]
    # Corners of the voxel-edge bounding box, in the new axes' coordinates.
    corner_indices = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in size])))
    corners = origin + (corner_indices * spacing) @ direction.T
    edge = (corners @ new_direction).min(axis=0)
    first_centre = edge + 0.5 * new_spacing
    reference = sitk.Image([int(n) for n in new_size], sitk.sitkUInt8)
    reference.SetSpacing(new_spacing.tolist())
    reference.SetDirection(new_direction.flatten().tolist())
    reference.SetOrigin((new_direction @ first_centre).tolist())
    return reference


def _anti_alias(image: sitk.Image, target_spacing: list[float]) -> sitk.Image:
    """Gaussian pre-filter before downsampling (sigma = (new - old) / 2 mm per input axis, as
    scikit-image's rescale does in pixels); an axis kept at its own spacing (the slice axis
    of the 2D grid) is not smoothed."""
    sigmas = [max(target - s, 0.0) / 2 for target, s in zip(target_spacing, image.GetSpacing())]
    if max(sigmas) < 0.25 * min(image.GetSpacing()):
        return image
    return sitk.DiscreteGaussian(image, [s * s for s in sigmas], 64, 0.01, True)


def to_sagittal_stack(image: sitk.Image, reference: sitk.Image, spacing_mm: float, is_label: bool = False) -> np.ndarray:
    """Resample ``image`` onto ``reference``; returns float32 (or int) [slices, rows, columns].

    Intensities: anti-aliased then linear, outside the image filled with its minimum.
    Labels: nearest neighbour, outside = 0. Each input axis is anti-aliased for the spacing
    ``reference`` gives it: ``spacing_mm`` in-plane, the reference's own slice spacing on
    the slice axis (so a 2D grid's slices stay sharp and an isotropic grid's are filtered).
    """
    if is_label:
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
        array = sitk.GetArrayFromImage(resampled)
    else:
        floating = sitk.Cast(image, sitk.sitkFloat32)
        target_spacing = [spacing_mm] * image.GetDimension()
        if image.GetDimension() == 3:
            target_spacing[sagittal_axes(image)[0]] = reference.GetSpacing()[2]
        floating = _anti_alias(floating, target_spacing)
        fill = float(sitk.GetArrayViewFromImage(floating).min())
        resampled = sitk.Resample(floating, reference, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(resampled)
    return array[None] if reference.GetDimension() == 2 else array


def from_sagittal_stack(stack: np.ndarray, reference: sitk.Image, target: sitk.Image, is_label: bool) -> sitk.Image:
    """Map a [slices, rows, columns] result on ``reference`` back onto ``target``'s voxel grid."""
    array = stack[0] if reference.GetDimension() == 2 else stack
    result = sitk.GetImageFromArray(np.ascontiguousarray(array))
    result.CopyInformation(reference)
    if is_label:
        return sitk.Resample(result, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, result.GetPixelID())
    return sitk.Resample(result, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
