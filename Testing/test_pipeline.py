"""``pipeline.segment`` behaviour that the CLI tests do not reach: falling back to smaller
batches, then to the CPU, when the GPU runs out of memory; ``segment`` as sampling followed by
``labels_and_uncertainty``, the two steps the measurements call themselves.

CI has no GPU, so the memory limit is played by the real bundled networks behind a
wrapper that raises CUDA's own out-of-memory error for batches above a size, as a small
GPU would (or for every call until it is moved, as a GPU too small for one slice would,
and the fallback device is the real CPU); everything else is the real pipeline on a real
volume."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk
import torch
from torch import nn

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.inferers.sagittal import sagittal_axes
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.models import get_card, load_network, make_scheduler
from VerdiffSegmentLib.pipeline import labels_and_uncertainty, sample_slices, sample_volume, segment
from VerdiffSegmentLib.preparation import prepare_for_card

from conftest import MR_IMAGE


class SmallGPU(nn.Module):
    """The real network; prior computations on more than ``limit`` slices raise out-of-memory."""

    def __init__(self, network: nn.Module, limit: int):
        super().__init__()
        self.network, self.limit, self.refusals = network, limit, 0
        self.num_classes, self.input_multiple = network.num_classes, network.input_multiple

    def condition(self, images):
        if images.shape[0] > self.limit:
            self.refusals += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test limit {self.limit} slices)")
        return self.network.condition(images)

    def forward(self, *args):
        return self.network(*args)


@pytest.fixture(scope="module")
def central_slab():
    """12 central sagittal slices of a held-out MR volume. Its third axis is left-right (the
    slab was once cut along the first, which is head-feet: 12 rows of every slice, where a
    better model rightly finds no spine and nothing is diffused to run out of memory)."""
    volume = sitk.ReadImage(str(MR_IMAGE))
    assert sagittal_axes(volume)[0] == 2
    middle = volume.GetSize()[2] // 2
    return volume[:, :, middle - 6 : middle + 6]


def test_out_of_memory_retries_with_smaller_batches_and_gives_the_same_result(central_slab):
    card = get_card("verdiff-mr")
    network = load_network(card, "cpu")
    reference = segment(central_slab, card, device="cpu", network=network, batch_size=2, seed=4)
    small = SmallGPU(network, limit=2)
    result = segment(central_slab, card, device="cpu", network=small, batch_size=8, seed=4)
    assert small.refusals == 2  # 8 -> 4 -> 2
    assert np.array_equal(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(reference.labels))
    assert np.array_equal(sitk.GetArrayViewFromImage(result.uncertainty), sitk.GetArrayViewFromImage(reference.uncertainty))


def test_out_of_memory_on_one_slice_is_a_clear_error(central_slab):
    card = get_card("verdiff-mr")
    with pytest.raises(VerdiffError, match="single slice"):
        segment(central_slab, card, device="cpu", network=SmallGPU(load_network(card, "cpu"), limit=0), batch_size=4)


class GPUTooSmallForOneSlice(nn.Module):
    """The real network; every denoising call (after the sampler drew its noise) raises
    CUDA's out-of-memory error until the network is moved with ``to`` (the pipeline's fall
    back to the CPU), after which it runs as it is."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.refusals, self.moves = network, 0, []
        self.num_classes, self.input_multiple = network.num_classes, getattr(network, "input_multiple", 1)

    def to(self, device):
        self.moves.append(torch.device(device))
        return super().to(device)

    def condition(self, images):
        return self.network.condition(images)

    def forward(self, *args):
        if not self.moves:
            self.refusals += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test: the GPU holds no slice)")
        return self.network(*args)


def sampler_input(image, card):
    """The network-ready stack of ``image`` for ``card`` (as ``segment`` prepares it), a
    scheduler, and the input channels' slice offsets (a 2.5D card's neighbours)."""
    prepared = prepare_for_card(image, card)
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(2)
    return prepared.stack, scheduler, prepared.input_offsets


def test_a_slice_that_does_not_fit_the_gpu_finishes_on_the_cpu_with_the_same_noise(central_slab):
    card = get_card("verdiff-mr")
    network = load_network(card, "cpu")
    stack, scheduler, offsets = sampler_input(central_slab, card)
    cpu = torch.device("cpu")
    reference = sample_slices(stack, card, network, scheduler, 2, torch.Generator().manual_seed(4), cpu, 4, None, None, offsets=offsets)
    gpu, warnings, progress = GPUTooSmallForOneSlice(network), [], []
    played = sample_slices(stack, card, gpu, scheduler, 2, torch.Generator().manual_seed(4), cpu, 4, lambda *a: progress.append(a), None, fallback=cpu, warnings=warnings, offsets=offsets)
    assert gpu.refusals == 3 and gpu.moves == [cpu]  # 4 slices -> 2 -> 1 -> the CPU, in batches of 4 again
    assert reference[2] > 0  # slices were diffused: the refused calls had drawn noise
    for expected, observed in zip(reference, played):
        assert np.array_equal(expected, observed)  # the retried slices drew the same noise
    assert progress[-1] == ("inference", len(stack), len(stack))
    assert len(warnings) == 1 and "ran out of memory on a single slice" in warnings[0] and "CPU" in warnings[0]


def test_a_window_that_does_not_fit_the_gpu_finishes_on_the_cpu_with_the_same_noise():
    card = get_card("imgx3d-mr")
    network = load_network(card, "cpu")
    volume = sitk.ReadImage(str(MR_IMAGE))
    middle = volume.GetSize()[0] // 2
    stack, scheduler, _ = sampler_input(volume[middle - 12 : middle + 12, :, :], card)
    cpu = torch.device("cpu")
    reference = sample_volume(stack, card, network, scheduler, 2, torch.Generator().manual_seed(4), cpu, 2, None, None)
    gpu, warnings = GPUTooSmallForOneSlice(network), []
    played = sample_volume(stack, card, gpu, scheduler, 2, torch.Generator().manual_seed(4), cpu, 2, None, None, fallback=cpu, warnings=warnings)
    assert gpu.refusals == 2 and gpu.moves == [cpu]  # 2 windows -> 1 -> the CPU
    for expected, observed in zip(reference, played):
        assert np.array_equal(expected, observed)
    assert len(warnings) == 1 and "single window" in warnings[0]
    with pytest.raises(VerdiffError, match="single window"):  # already on the CPU: nowhere to go
        sample_volume(stack, card, GPUTooSmallForOneSlice(network), scheduler, 1, torch.Generator(), cpu, 2, None, None)


def test_segment_is_the_ensemble_then_labels_and_uncertainty(central_slab):
    """What ``segment`` returns is ``sample_slices`` followed by ``labels_and_uncertainty``, bit for
    bit (here with the MR card's slice-averaged probability, spine chain and smoothed
    uncertainty): measurements that score sampled probabilities themselves
    (``benchmarks/flip_averaging.py``) call the same two, so they score what ``segment`` gives.
    A step added to ``segment`` between them fails here; it belongs in ``labels_and_uncertainty``."""
    card = get_card("verdiff-mr")
    network = load_network(card, "cpu")
    result = segment(central_slab, card, device="cpu", network=network, seed=3, keep_probability=True, per_vertebra=False)
    prepared = prepare_for_card(central_slab, card)
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(card.default_steps)
    generator = torch.Generator().manual_seed(3)
    probability, spread, _ = sample_slices(prepared.stack, card, network, scheduler, card.default_ensemble, generator, torch.device("cpu"), 8, None, None, offsets=prepared.input_offsets)
    ours = labels_and_uncertainty(probability, spread, prepared, card, keep_probability=True)
    assert card.postprocess.get("probability_slice_sigma_mm") and card.postprocess.get("spine_bridge_mm")
    assert ours.labels_on_grid.any()
    for theirs, mine in ((result.labels, ours.labels), (result.uncertainty, ours.uncertainty), (result.probability, ours.foreground)):
        assert np.array_equal(sitk.GetArrayViewFromImage(theirs), sitk.GetArrayViewFromImage(prepared.restore(mine)))
    assert result.settings["reliability"] == ours.reliability


@pytest.mark.parametrize("sides, widths", [("all", ((16, 16), (16, 16))), ("superior", ((16, 0), (0, 0)))])
def test_a_card_with_edge_padding_samples_the_slices_padded_by_their_border_and_cropped_back(central_slab, sides, widths):
    """``input.edge_padding_px`` 16: ``sample_slices`` returns, bit for bit, what the unpadded
    card returns on the stack padded by hand (16 border rows and columns repeated on every side;
    ``edge_padding_sides`` "superior": 16 rows at the top only) cropped back to the slices' own
    grid; and not what it returns on the stack unpadded (the padding reaches the network)."""
    bundled = get_card("verdiff-mr")
    card = bundled.derived(input={**bundled.raw["input"], "edge_padding_px": 0})  # the bundled card pads its slices itself
    padded_card = bundled.derived(input={**bundled.raw["input"], "edge_padding_px": 16, "edge_padding_sides": sides})
    network = load_network(card, "cpu")
    prepared = prepare_for_card(central_slab[:, :, 4:8], card)
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(card.default_steps)

    def sampled(stack, which):
        return sample_slices(stack, which, network, scheduler, card.default_ensemble, torch.Generator().manual_seed(5), torch.device("cpu"), 8, None, None,
                             offsets=prepared.input_offsets)[0]

    stack = prepared.stack
    by_card = sampled(stack, padded_card)
    (top, bottom), (left, right) = widths
    by_hand = sampled(np.pad(stack, ((0, 0), *widths), mode="edge"), card)[:, :, top : top + stack.shape[1], left : left + stack.shape[2]]
    assert by_card.shape == (stack.shape[0], 1, *stack.shape[1:])
    assert np.array_equal(by_card, by_hand)
    assert not np.array_equal(by_card, sampled(stack, card))


def test_a_card_with_tiles_samples_the_slices_in_blended_windows_padded_as_training_crops(central_slab):
    """``input.tile_px``: a tile larger than the slices (256 px over the MR grid's slices of
    about 180 x 180 px) gives the whole slice's result, and with ``input.tile_padding`` "zeros" what the untiled card gives on the stack padded
    with zeros at its end up to 256 x 256 (as training pads a slice smaller than its crop) and
    cropped back (but for the blending's rounding), and not what it gives unpadded; tiles of 64 px are sampled window by window
    and blended back in place: the same shape, probabilities in [0, 1], and the same spine
    (Dice of the thresholded maps over 0.8; a window blended at the wrong place would not)."""
    bundled = get_card("verdiff-mr")
    card = bundled.derived(input={**bundled.raw["input"], "edge_padding_px": 0})
    network = load_network(card, "cpu")
    prepared = prepare_for_card(central_slab[:, :, 4:8], card)
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(card.default_steps)

    def sampled(stack, tile, padding="none"):
        which = card.derived(input={**card.raw["input"], "tile_px": tile, "tile_padding": padding}) if tile else card
        return sample_slices(stack, which, network, scheduler, card.default_ensemble, torch.Generator().manual_seed(5), torch.device("cpu"), 8, None, None,
                             offsets=prepared.input_offsets)

    stack = prepared.stack
    rows, cols = stack.shape[1:]
    assert max(rows, cols) < 256
    whole = sampled(stack, None)[0]
    assert np.array_equal(sampled(stack, 256)[0], whole)  # "none": a short axis is one window of its own length
    one_tile, one_tile_spread, _ = sampled(stack, 256, "zeros")
    by_hand, by_hand_spread, _ = sampled(np.pad(stack, ((0, 0), (0, 256 - rows), (0, 256 - cols))), None)
    # equal but for the blending's rounding (weight x value / weight)
    assert np.allclose(one_tile, by_hand[:, :, :rows, :cols], rtol=0, atol=1e-6) and np.allclose(one_tile_spread, by_hand_spread[:, :, :rows, :cols], rtol=0, atol=1e-6)
    assert np.abs(one_tile - whole).max() > 1e-3
    tiled, tiled_spread, diffused = sampled(stack, 64)
    assert tiled.shape == whole.shape and tiled_spread.shape == whole.shape and diffused == len(stack)
    assert tiled.min() >= 0 and tiled.max() <= 1 and np.isfinite(tiled_spread).all()
    assert (whole > 0.5).any() and dice(tiled > 0.5, whole > 0.5) > 0.8, dice(tiled > 0.5, whole > 0.5)


def test_a_multi_class_result_keeps_the_binary_union_and_gives_each_voxel_a_level():
    """A 5-level (L1..L5) result built from a real MR subject's truth on the network's grid,
    through ``labels_and_uncertainty``: the union is mapped as a binary card's (linearly: no
    staircase of the coarse grid), every voxel of it carries a level and each level lands on
    its truth body; with nearest-neighbour labels (the coarse grid's staircase) the union's
    Dice is lower (measured 0.9731 against 0.9752 on this 1.25 mm grid of a 1 mm volume)."""
    from conftest import MR_LABELS

    image, truth_image = sitk.ReadImage(str(MR_IMAGE)), sitk.ReadImage(str(MR_LABELS))
    binary_card = get_card("verdiff-mr")
    levels = [{"value": k, "name": f"L{k} vertebral body", "covers": f"vertebral body L{k}", "color": [0.5, 0.5, 0.5]} for k in range(1, 6)]
    card = binary_card.derived(labels=levels, network={**binary_card.raw["network"], "num_classes": 5})
    prepared = prepare_for_card(image, card)
    on_grid = prepared.labels_on_grid(truth_image)
    # a smooth probability, as a network's: each level's mask blurred on the grid
    probability = np.stack([ndi.gaussian_filter((on_grid == k).astype(np.float32), (0, 1.0, 1.0)) for k in range(1, 6)], axis=1)
    result = labels_and_uncertainty(probability, np.zeros_like(probability), prepared, card)
    labels, truth = sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(truth_image)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4, 5}
    staircase = sitk.GetArrayFromImage(prepared.to_input_grid(result.labels_on_grid, is_label=True))
    assert dice(labels > 0, truth > 0) > dice(staircase > 0, truth > 0) + 0.001, (dice(labels > 0, truth > 0), dice(staircase > 0, truth > 0))
    for level in range(1, 6):
        assert dice(labels == level, truth == level) > 0.9, level
