"""Boundary metrics (VerdiffSegmentLib/metrics.py) on shapes whose answer is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from VerdiffSegmentLib.metrics import dice, hd95, iou, nsd


def _box(shape, half_sizes, centre=None):
    """Boolean box of the given half sizes (in voxels) about the array's centre."""
    centre = centre or [n // 2 for n in shape]
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c - h, c + h + 1) for c, h in zip(centre, half_sizes))] = True
    return mask


def _squares():
    """Concentric squares 3 voxels apart, large enough that the outer square's corner regions
    (further than 3 from the inner square) are under 5 % of its boundary."""
    return _box((240, 240), (100, 100)), _box((240, 240), (103, 103))


def test_concentric_squares_are_their_margin_apart():
    """Every boundary voxel of the inner square is exactly d from the outer boundary, and all
    but the corners of the outer one are d from the inner: HD95 = d."""
    inner, outer = _squares()
    assert hd95(inner, outer) == pytest.approx(3.0)
    assert hd95(outer, inner) == pytest.approx(3.0)
    assert hd95(inner, outer, spacing=(0.5, 0.5)) == pytest.approx(1.5)


def test_anisotropic_spacing_is_in_millimetres():
    """Margins of 2 rows at 3 mm and 6 columns at 1 mm are both 6 mm."""
    inner = _box((240, 280), (100, 120))
    outer = _box((240, 280), (102, 126))
    assert hd95(inner, outer, spacing=(3.0, 1.0)) == pytest.approx(6.0)
    assert hd95(inner, outer) == pytest.approx(6.0)  # in voxels: 2 on the long sides, 6 on the short ones
    assert hd95(inner, outer, spacing=(10.0, 1.0)) == pytest.approx(20.0)


def test_spheres_differ_by_their_radii():
    z, y, x = np.mgrid[0:64, 0:64, 0:64]
    spacing = (2.0, 1.0, 1.0)
    radius = np.sqrt(((z - 32) * spacing[0]) ** 2 + (y - 32) ** 2 + (x - 32) ** 2)
    small, large = radius <= 18, radius <= 24
    assert abs(hd95(small, large, spacing) - 6.0) <= 1.0  # within one voxel of discretisation
    assert nsd(small, large, 7.0, spacing) == 1.0
    assert nsd(small, large, 4.0, spacing) < 0.05


def test_nsd_counts_the_boundary_within_tolerance():
    inner, outer = _squares()
    assert nsd(inner, outer, tolerance=2.9) == 0.0
    assert nsd(inner, outer, tolerance=3.0 * math.sqrt(2) + 1e-6) == 1.0
    partial = nsd(inner, outer, tolerance=3.0)  # only the outer square's corner regions are further
    assert 0.97 < partial < 1.0
    assert nsd(inner, outer, tolerance=1.5, spacing=(0.5, 0.5)) == pytest.approx(partial)


def test_identical_and_empty_masks():
    mask = _box((30, 30), (5, 7))
    empty = np.zeros_like(mask)
    assert hd95(mask, mask) == 0.0 and nsd(mask, mask, 0.0) == 1.0
    assert hd95(empty, empty) == 0.0 and nsd(empty, empty, 1.0) == 1.0
    assert hd95(mask, empty) == math.inf and nsd(mask, empty, 1.0) == 0.0
    assert dice(mask, empty) == 0.0 and iou(mask, mask) == 1.0


def test_a_shape_touching_the_image_border_has_a_boundary_there():
    """Outside the image counts as background: a mask filling the image has a boundary."""
    full = np.ones((201, 201), bool)
    smaller = _box((201, 201), (97, 97))
    assert hd95(full, smaller) == pytest.approx(3.0)
