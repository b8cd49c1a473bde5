"""``pipeline.segment`` behaviour that the CLI tests do not reach: falling back to smaller
batches when the GPU runs out of memory.

CI has no GPU, so the memory limit is played by the real bundled MR network behind a
wrapper that raises CUDA's own out-of-memory error for batches above a size, as a small
GPU would; everything else is the real pipeline on a real volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.models import get_card, load_network
from VerdiffSegmentLib.pipeline import segment

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
    """12 central sagittal slices of a held-out MR volume (its first axis is left-right)."""
    volume = sitk.ReadImage(str(MR_IMAGE))
    middle = volume.GetSize()[0] // 2
    return volume[middle - 6 : middle + 6, :, :]


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
