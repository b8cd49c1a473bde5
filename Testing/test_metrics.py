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


# -- monai as an oracle (test dependency only), on a real label map --------------------------
def _real_pair(data_dir):
    """A real lumbar MR label (VB3_17) as truth and a plausible wrong prediction: shifted by
    2 voxels along the spine, with one body eroded and a false blob, on the real 1 mm grid."""
    import scipy.ndimage as ndi
    import SimpleITK as sitk

    image = sitk.ReadImage(str(data_dir / "mr-lumbar-vb3" / "VB3_17_seg.nii.gz"))
    truth = sitk.GetArrayFromImage(image) > 0
    prediction = np.roll(truth, 2, axis=0)
    prediction &= ~(ndi.binary_erosion(prediction, iterations=3) ^ prediction) | (np.arange(truth.shape[1])[None, :, None] < 120)
    prediction[5:15, 20:30, 30:40] = True
    return prediction, truth, np.array(image.GetSpacing()[::-1])


def test_dice_hd95_and_surface_dice_agree_with_monai(data_dir):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    prediction, truth, spacing = _real_pair(data_dir)
    spacing = spacing * np.array([1.0, 1.0, 2.5])  # anisotropic, as clinical MR is
    as_tensor = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731  one-hot [B, C, ...]
    p, t = as_tensor(prediction), as_tensor(truth)
    assert dice(prediction, truth) == pytest.approx(float(monai_metrics.compute_dice(p, t, include_background=False)), abs=1e-6)
    reference_hd95 = float(monai_metrics.compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=list(spacing)))
    assert hd95(prediction, truth, spacing) == pytest.approx(reference_hd95, rel=1e-3)
    for tolerance in (1.0, 2.0):
        reference_nsd = float(monai_metrics.compute_surface_dice(p, t, class_thresholds=[tolerance], include_background=False, spacing=list(spacing)))
        assert nsd(prediction, truth, tolerance, spacing) == pytest.approx(reference_nsd, abs=2e-3)


def test_auroc_and_ece_on_known_answers():
    from VerdiffSegmentLib.metrics import auroc, expected_calibration_error, grown_bounding_box

    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    assert auroc(scores, positive) == pytest.approx(0.75)  # sklearn's roc_auc_score gives 0.75
    assert auroc(np.ones(4), positive) == pytest.approx(0.5)  # all tied: chance
    assert auroc(scores, np.zeros(4, bool)) is None
    # perfectly calibrated bins give 0; always saying 0.9 where half are foreground gives 0.4
    probability = np.array([0.25] * 4 + [0.75] * 4)
    truth = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)
    assert expected_calibration_error(probability, truth) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) < 5) == pytest.approx(0.4)
    mask = np.zeros((30, 30), bool)
    mask[10:12, 20:22] = True
    assert grown_bounding_box(mask, 10) == (slice(0, 22), slice(10, 30))
    assert grown_bounding_box(np.zeros((3, 3), bool), 10) is None
