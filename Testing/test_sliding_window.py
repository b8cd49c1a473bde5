"""Sliding-window inference: the windows cover every voxel, and the weighted average
blends predictions back onto the right voxels (ImgX-DiffSeg's 3D variant predicts patches)."""

from __future__ import annotations

import itertools

import pytest
import torch

from VerdiffSegmentLib.inferers.sliding_window import coverage_weights, sliding_window_inference, window_starts, window_weight

SHAPES = [  # (volume, patch): uneven 3D, a volume thinner than the patch, 2D
    ((20, 33, 17), (8, 16, 16)),
    ((5, 40, 24), (8, 16, 16)),
    ((50, 37), (16, 16)),
]


def test_window_starts_span_the_axis_and_end_flush():
    assert window_starts(33, 16, 0.5) == [0, 8, 16, 17]
    assert window_starts(32, 16, 0.0) == [0, 16]
    assert window_starts(10, 16, 0.5) == [0]
    for size, patch, overlap in itertools.product([16, 17, 31, 64, 100], [8, 16], [0.0, 0.25, 0.5, 0.75]):
        starts = window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == size - patch
        covered = set().union(*(range(s, s + patch) for s in starts))
        assert covered == set(range(size))
    with pytest.raises(ValueError):
        window_starts(32, 16, 1.0)


@pytest.mark.parametrize("spatial, patch", SHAPES)
@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_every_voxel_gets_a_positive_weight(spatial, patch, weighting):
    weights = coverage_weights(spatial, patch, overlap=0.5, weighting=weighting)
    assert weights.shape == spatial
    assert weights.min() > 0


@pytest.mark.parametrize("spatial, patch", SHAPES)
def test_constant_weights_count_the_windows_covering_each_voxel(spatial, patch):
    """With weight 1 per window, the total is exactly the number of windows over a voxel,
    counted here independently from the window starts."""
    weights = coverage_weights(spatial, patch, overlap=0.5, weighting="constant")
    counts = torch.ones(())
    for axis, (size, p) in enumerate(zip(spatial, patch)):
        per_axis = torch.zeros(size)
        for start in window_starts(max(size, p), p, 0.5):
            per_axis[start : start + p] += 1
        counts = counts[..., None] * per_axis if axis else per_axis
    torch.testing.assert_close(weights, counts)
    # without overlap and with sizes a multiple of the patch, each voxel is covered exactly once
    once = coverage_weights((16, 32, 48), (8, 16, 16), overlap=0.0, weighting="constant")
    assert torch.equal(once, torch.ones(16, 32, 48))


@pytest.mark.parametrize("spatial, patch", SHAPES)
def test_a_constant_predictor_is_reproduced(spatial, patch):
    volume = torch.randn(2, 1, *spatial)
    constant = torch.tensor([0.25, -3.0]).reshape(1, 2, *([1] * len(spatial)))
    output = sliding_window_inference(volume, patch, lambda x: constant.expand(x.shape[0], 2, *x.shape[2:]), overlap=0.5, batch_size=3)
    assert output.shape == (2, 2, *spatial)
    torch.testing.assert_close(output, constant.expand_as(output))


@pytest.mark.parametrize("spatial, patch", SHAPES)
def test_an_identity_predictor_puts_every_window_back_in_place(spatial, patch):
    """Each window's output lands where its input came from, whatever the batch grouping."""
    volume = torch.randn(2, 3, *spatial)
    for batch_size in (1, 5):
        output = sliding_window_inference(volume, patch, lambda x: x * 2, overlap=0.5, batch_size=batch_size)
        torch.testing.assert_close(output, volume * 2)


def test_gaussian_weight_peaks_at_the_centre_and_stays_positive():
    weight = window_weight((9, 16, 16))
    assert weight.shape == (9, 16, 16) and weight.min() > 0
    assert weight[4, 7, 7] > weight[0, 0, 0] and weight[4, 7, 7] == weight.max()
