"""The sagittal direction comes from the direction matrix, never from array order."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from conftest import CT_IMAGE, MR_IMAGE
from VerdiffSegmentLib.inferers.sagittal import from_sagittal_stack, sagittal_reference, to_sagittal_stack
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.models import get_card
from VerdiffSegmentLib.pipeline import segment


def reoriented(image: sitk.Image) -> sitk.Image:
    """The same physical image stored with permuted and flipped axes (direction matrix updated)."""
    flipped = sitk.Flip(image, [True, False, True])
    return sitk.PermuteAxes(flipped, [2, 0, 1])


def test_reoriented_copy_is_physically_identical():
    image = sitk.ReadImage(str(MR_IMAGE))
    other = reoriented(image)
    assert other.GetSize() != image.GetSize() or other.GetDirection() != image.GetDirection()
    back = sitk.Resample(other, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_canonical_grid_is_independent_of_storage_order():
    for path in (MR_IMAGE, CT_IMAGE):
        image = sitk.ReadImage(str(path))
        ref_a, ref_b = sagittal_reference(image, 1.5), sagittal_reference(reoriented(image), 1.5)
        assert ref_a.GetSize() == ref_b.GetSize()
        assert np.allclose(ref_a.GetOrigin(), ref_b.GetOrigin(), atol=1e-4)
        assert np.allclose(ref_a.GetDirection(), ref_b.GetDirection())
        assert np.allclose(ref_a.GetSpacing(), ref_b.GetSpacing())


def test_sagittal_stack_puts_superior_up_and_anterior_left():
    """On the chest CT (stored LAS) the canonical rows run head to feet: 4 cm left of the middle,
    the lung (air) lies above the upper abdomen (soft tissue)."""
    image = sitk.ReadImage(str(CT_IMAGE))
    reference = sagittal_reference(image, 1.5)
    stack = to_sagittal_stack(image, reference, 1.5)
    assert stack.shape[0] == image.GetSize()[0]  # one network slice per sagittal slice (LR axis)
    lateral = stack[stack.shape[0] // 2 + 60]  # slices run towards the patient's left
    top, bottom = lateral[: stack.shape[1] // 3], lateral[-stack.shape[1] // 3 :]
    assert np.median(top) < np.median(bottom)  # air above soft tissue
    # columns run front to back: the vertebrae lie in the back half of the body
    labels = to_sagittal_stack(sitk.ReadImage(str(CT_IMAGE).replace("cxr_ct_int16", "mask")), reference, 1.5, is_label=True)
    spine_columns = np.nonzero(np.isin(labels, range(29, 47)))[2]
    body_columns = np.nonzero(stack > -500)[2]
    assert np.median(spine_columns) > np.median(body_columns)


def test_round_trip_of_labels_is_exact_on_the_input_grid():
    image = sitk.ReadImage(str(MR_IMAGE))
    reference = sagittal_reference(image, 1.0)  # MR is 1 mm: the grid coincides with the input's
    labels = sitk.ReadImage(str(MR_IMAGE).replace("_img", "_seg"))
    stack = to_sagittal_stack(labels, reference, 1.0, is_label=True)
    back = from_sagittal_stack(stack, reference, image, is_label=True)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))


def test_same_segmentation_in_physical_space_after_permuting_and_flipping_axes():
    image = sitk.ReadImage(str(MR_IMAGE))
    card = get_card("verdiff-mr")
    first = segment(image, card, seed=11).labels
    second = segment(reoriented(image), card, seed=11).labels
    second_on_first = sitk.Resample(second, first, sitk.Transform(), sitk.sitkNearestNeighbor)
    a, b = sitk.GetArrayViewFromImage(first) > 0, sitk.GetArrayViewFromImage(second_on_first) > 0
    assert a.sum() > 1000
    assert dice(a, b) >= 0.99
