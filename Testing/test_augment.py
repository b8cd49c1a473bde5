"""Augmentation (training/augment.py): the paper's ranges, exact geometry, labels kept as
labels, and reproducibility from a seed."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import PRESETS, Augmentation, Warp, elastic_displacement, warp


def _blob(shape=(64, 80)):
    """An off-centre, asymmetric image and its two-label map."""
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    image[10:30, 20:35] = 0.8
    labels[10:30, 20:35] = 1
    image[40:50, 50:70] = 0.4
    labels[40:50, 50:70] = 2
    return image, labels


def _centroid(mask):
    return np.array(np.nonzero(mask)).mean(axis=1)


def test_rotation_by_90_degrees_is_exact_and_counter_clockwise():
    image, labels = _blob((65, 65))
    rotated, rotated_labels = warp(image, labels, Warp(angle_deg=90.0))
    assert np.allclose(rotated, np.rot90(image, 1), atol=1e-5)
    assert np.array_equal(rotated_labels, np.rot90(labels, 1))


def test_shift_moves_the_content_by_the_drawn_pixels():
    image, labels = _blob()
    shifted, shifted_labels = warp(image, labels, Warp(shift_px=(3.0, -5.0)))
    assert np.allclose(_centroid(shifted_labels == 1) - _centroid(labels == 1), [3.0, -5.0])
    assert np.allclose(shifted[13:33, 15:30], 0.8)


def test_drawn_parameters_stay_in_the_papers_ranges():
    paper = PRESETS["paper"]
    always = Augmentation(**{**paper.__dict__, "rotation_p": 1.0, "shift_p": 1.0, "elastic_p": 1.0})
    rng = np.random.default_rng(35)
    shape = (100, 60)
    angles, shifts, peaks = [], [], []
    for _ in range(300):
        w = always.draw_warp(shape, rng)
        angles.append(w.angle_deg)
        shifts.append(np.abs(np.array(w.shift_px)) / np.array(shape))
        peaks.append(np.sqrt((w.displacement**2).sum(axis=0)).max())
    angles, shifts = np.array(angles), np.array(shifts)
    assert angles.min() >= -30 and angles.max() <= 30 and angles.min() < -25 and angles.max() > 25
    assert shifts.min() >= 0.01 - 1e-9 and shifts.max() <= 0.05 + 1e-9
    assert max(peaks) <= paper.elastic_px + 1e-9
    # with probability 0.5 each transform is skipped
    rng = np.random.default_rng(1)
    skipped = sum(paper.draw_warp(shape, rng).angle_deg == 0 for _ in range(400))
    assert 150 < skipped < 250


def test_elastic_displacement_is_smooth_and_bounded():
    field = elastic_displacement((120, 90), 4.0, 20.0, np.random.default_rng(0))
    magnitude = np.sqrt((field**2).sum(axis=0))
    assert np.isclose(magnitude.max(), 4.0)
    assert np.abs(np.diff(field, axis=1)).max() < 0.25  # neighbours move together: local stretch < 25 %
    image, labels = _blob()
    _, warped = warp(image, labels, Warp(displacement=elastic_displacement(labels.shape, 4.0, 20.0, np.random.default_rng(3))))
    for value in (1, 2):
        assert abs((warped == value).sum() / (labels == value).sum() - 1) < 0.2


def test_labels_are_never_interpolated():
    image, labels = _blob()
    rng = np.random.default_rng(7)
    for _ in range(10):
        _, out = PRESETS["paper"].spatial(image, labels, rng)
        assert set(np.unique(out)) <= {0, 1, 2}
        assert out.dtype == labels.dtype


def test_contrast_and_gamma_keep_the_range_and_the_order_of_intensities():
    image = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    strong = Augmentation(contrast=(1.25, 1.25), contrast_p=1.0, gamma=(1.5, 1.5), gamma_p=1.0)
    out = strong.intensity(image, np.random.default_rng(0))
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone: anatomy keeps its relative brightness
    assert not np.allclose(out, image)


def test_same_seed_same_sample_other_seed_other_sample():
    image, labels = _blob()
    paper = PRESETS["paper"]

    def sample(seed):
        rng = np.random.default_rng(seed)
        a, b = paper.spatial(image, labels, rng)
        return paper.intensity(a, rng), b

    first, again, other = sample(35), sample(35), sample(36)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("name", ["light", "paper", "none"])
def test_presets_run(name):
    image, labels = _blob()
    out, out_labels = PRESETS[name].spatial(image, labels, np.random.default_rng(0))
    assert out.shape == image.shape and out_labels.shape == labels.shape
    if name == "none":
        assert np.array_equal(out, image) and np.array_equal(PRESETS[name].intensity(out, np.random.default_rng(0)), image)


# -- any-contrast: contrast and resolution randomisation (issue 16) -------------------------
from training.augment import bias_field, lower_resolution, rescale_percentiles, tissue_curve  # noqa: E402
from training.sampler import thick_slice  # noqa: E402


def test_any_contrast_keeps_the_range_and_is_reproducible_from_a_seed():
    image, _ = _blob()
    image = image + np.linspace(0, 0.2, image.shape[1])[None].astype(np.float32)
    preset = PRESETS["any-contrast"]
    outs = [preset.intensity(image, np.random.default_rng(seed)) for seed in range(40)]
    assert all(o.dtype == np.float32 and o.shape == image.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert np.array_equal(preset.intensity(image, np.random.default_rng(7)), outs[7])
    # it really changes contrast: some outputs invert the order of the two blobs' intensities
    inverted = sum(o[15, 25] < o[45, 60] for o in outs)
    assert 0 < inverted < len(outs)


def test_ct_preset_keeps_window_intensities_where_they_were():
    """CT is normalised by a fixed HU window: a blurred or block-averaged slice must not be
    stretched back to [0, 1] by percentiles (bone at 0.6 of the window stays near 0.6), and no
    draw inverts or reorders tissues."""
    image = np.full((64, 80), 0.35, np.float32)  # soft tissue
    image[20:40, 30:50] = 0.6  # bone
    preset = PRESETS["ct"]
    assert preset.curve_p == preset.invert_p == preset.bias_p == 0 and not preset.rescale_randomised
    changed = 0
    for seed in range(60):
        out = preset.intensity(image, np.random.default_rng(seed))
        assert out[30, 40] > out[5, 5]  # bone stays brighter than soft tissue
        assert out.max() < 0.9  # never stretched to the top of the window
        changed += not np.allclose(out, image, atol=0.05)
    assert changed > 10  # it does augment
    # the MR preset rescales after the same kind of draw
    mr = [PRESETS["any-contrast"].intensity(image, np.random.default_rng(seed)).max() for seed in range(60)]
    assert max(mr) > 0.95


def test_a_monotonic_tissue_curve_keeps_the_order_of_intensities():
    values = np.linspace(0, 1, 101)
    for seed in range(20):
        out = tissue_curve(values, True, np.random.default_rng(seed))
        assert np.all(np.diff(out) >= -1e-9) and out.min() >= 0 and out.max() <= 1


def test_lower_resolution_blurs_along_one_axis_only():
    image = np.zeros((40, 40), np.float32)
    image[:, ::2] = 1.0  # stripes across columns
    changed_axes = set()
    for seed in range(12):
        out = lower_resolution(image, np.random.default_rng(seed))
        assert out.shape == image.shape and abs(out.mean() - image.mean()) < 0.05
        rows_kept = np.allclose(out, image, atol=1e-6)
        changed_axes.add("none" if rows_kept else ("columns" if out[:, ::2].mean() < 0.99 else "rows"))
    assert "columns" in changed_axes  # blurring across the stripes smooths them


def test_bias_field_is_smooth_positive_and_bounded():
    field = bias_field((64, 48), 0.4, np.random.default_rng(3))
    assert field.shape == (64, 48) and field.min() >= np.exp(-0.4) - 1e-6 and field.max() <= np.exp(0.4) + 1e-6
    assert np.abs(np.diff(np.log(field), axis=0)).max() < 0.1


def test_rescale_percentiles_maps_to_the_unit_range_and_keeps_flat_images():
    ramp = np.linspace(2.0, 5.0, 1000)
    out = rescale_percentiles(ramp)
    assert out.min() == 0 and out.max() == 1
    assert np.array_equal(rescale_percentiles(np.full(10, 0.3)), np.full(10, 0.3))


def test_thick_slice_is_the_mean_of_the_neighbours_cut_at_the_ends():
    stack = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    assert np.allclose(thick_slice(stack, 2, 1), 2.0) and np.allclose(thick_slice(stack, 2, 2), 2.0)
    assert np.allclose(thick_slice(stack, 0, 1), 0.5)


def test_scale_enlarges_about_the_centre():
    image, labels = _blob((65, 65))
    _, grown = warp(image, labels, Warp(scale=1.25))
    assert abs((grown == 1).sum() / (labels == 1).sum() - 1.25**2) < 0.1


# -- 2.5D samples [C, rows, cols]: one transform for all channels (issue 16, item 4) ----------
@pytest.mark.parametrize("name", ["light", "paper", "any-contrast"])
def test_one_channel_gives_bit_for_bit_what_the_slice_gives(name):
    image, labels = _blob()
    image = image + np.linspace(0, 0.2, image.shape[1])[None].astype(np.float32)
    preset = PRESETS[name]
    for seed in range(25):
        flat_rng, channel_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        flat, flat_labels = preset.spatial(image, labels, flat_rng)
        stacked, stacked_labels = preset.spatial(image[None], labels, channel_rng)
        assert np.array_equal(stacked[0], flat) and np.array_equal(stacked_labels, flat_labels)
        assert np.array_equal(preset.intensity(stacked, channel_rng, channels=True)[0], preset.intensity(flat, flat_rng))


def test_every_channel_of_a_sample_gets_the_same_transform():
    """Three equal channels stay equal through the warp and every intensity transform (noise
    aside, which is per pixel as in a scan), and the resolution loss never runs across channels."""
    image, labels = _blob()
    image = image + np.linspace(0, 0.2, image.shape[1])[None].astype(np.float32)
    always = Augmentation(**{**PRESETS["any-contrast"].__dict__, "noise_p": 0.0, "rotation_p": 1.0, "elastic_p": 1.0, "resolution_p": 1.0, "bias_p": 1.0, "curve_p": 1.0})
    channels = np.stack([image, image, image])
    for seed in range(15):
        rng = np.random.default_rng(seed)
        warped, _ = always.spatial(channels, labels, rng)
        out = always.intensity(warped, rng, channels=True)
        assert out.shape == channels.shape and out.dtype == np.float32
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    different = np.stack([image, 1 - image, image])  # a channel unlike the others must stay itself
    out = lower_resolution(different, np.random.default_rng(0), channels=True)
    assert np.abs(out[1] - (1 - out[0])).max() < 1e-5


def test_a_thick_2_5d_slice_averages_the_slab_around_each_channel():
    stack = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 2), np.float32)
    assert np.array_equal(thick_slice(stack, 2, 1, [0.0])[0], thick_slice(stack, 2, 1))  # one channel: the slice's own slab
    channels = thick_slice(stack, 2, 1, [-1.5, 0.0, 1.5])
    assert channels.shape == (3, 2, 2) and np.allclose(channels[:, 0, 0], [1.0, 2.0, 3.5])  # 0.5 and 1.5; 1, 2, 3; 2.5, 3.5, 4.5 (-0.5 lies before the first slice)
    edge = thick_slice(stack, 0, 1, [-1.5, 0.0, 1.5])  # beyond the first slice: the edge, its slab cut at the end
    assert np.allclose(edge[:, 0, 0], [0.5, 0.5, 1.5])
