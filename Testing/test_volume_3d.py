"""The 3D whole-volume path on real MR: the isotropic grid, the patch sampler, a few real 3D
training steps, and the bundled 3D model segmenting a held-out volume onto its own grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import MR_IMAGE, MR_LABELS, xray_image
from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.inferers.sagittal import from_sagittal_stack, sagittal_reference, to_sagittal_stack
from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.metrics import dice
from VerdiffSegmentLib.models import get_card
from VerdiffSegmentLib.pipeline import Cancelled, segment
from training import datasets
from training.augment import PRESETS
from training.configs import recipe_config
from training.evaluate import run_card
from training.objectives import objective_for
from training.sampler import PatchSampler
from training.train import TrainOptions, train

from test_orientation import reoriented

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = (16, 32, 32)


def test_isotropic_grid_resamples_the_slices_and_round_trips_labels_exactly():
    labels = sitk.ReadImage(str(MR_LABELS))
    for image in (labels, reoriented(labels)):
        # MR is 1 mm isotropic: a 1 mm isotropic grid coincides with the input's voxels
        reference = sagittal_reference(image, 1.0, slice_spacing_mm=1.0)
        stack = to_sagittal_stack(image, reference, 1.0, is_label=True)
        back = from_sagittal_stack(stack, reference, image, is_label=True)
        assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    # at 2 mm the slice axis (77 slices of 1 mm) is resampled too; the 2D grid keeps its slices
    image = sitk.ReadImage(str(MR_IMAGE))
    isotropic, planar = sagittal_reference(image, 2.0, slice_spacing_mm=2.0), sagittal_reference(image, 2.0)
    assert np.allclose(isotropic.GetSpacing(), 2.0) and np.allclose(planar.GetSpacing(), (2.0, 2.0, 1.0))
    assert isotropic.GetSize() == (112, 112, 39) and planar.GetSize() == (112, 112, 77)
    assert to_sagittal_stack(image, isotropic, 2.0).shape == (39, 112, 112)
    coarse = to_sagittal_stack(labels, isotropic, 2.0, is_label=True)
    back = sitk.GetArrayViewFromImage(from_sagittal_stack(coarse, isotropic, labels, is_label=True))
    assert dice(back > 0, sitk.GetArrayViewFromImage(labels) > 0) > 0.9


@pytest.fixture(scope="module")
def run_3d():
    return recipe_config("verdiff-mr", channels=(8, 16, 32), name="tiny-3d", family="imgx-diffseg", spatial_dims=3, patch_size=PATCH, spacing_mm=2.0)


@pytest.fixture(scope="module")
def isotropic_cases(run_3d, data_dir):
    return datasets.training_cases(run_3d, data_dir, limit=1)[0]


def test_patch_sampler_draws_foreground_patches_reproducibly_from_its_state(isotropic_cases):
    assert isotropic_cases[0].images.shape == (39, 112, 112)
    sampler = PatchSampler(isotropic_cases, PATCH, seed=7, augmentation=PRESETS["light"])
    sampler.batch(2)
    state = sampler.state_dict()
    images, masks = sampler.batch(6)
    assert images.shape == (6, 1, *PATCH) and masks.shape == (6, 1, *PATCH)
    assert images.dtype == torch.float32 and 0 <= float(images.min()) and float(images.max()) <= 1
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert int((masks.flatten(1).sum(1) > 0).sum()) >= 3, "most patches are centred on spine"
    sampler.load_state_dict(state)
    again_images, again_masks = sampler.batch(6)
    assert torch.equal(images, again_images) and torch.equal(masks, again_masks)
    # shards of a global batch, drawn by two ranks from the same state, are the batch
    sampler.load_state_dict(state)
    first = sampler.batch(6, slice(0, 3))[0]
    sampler.load_state_dict(state)
    second = sampler.batch(6, slice(3, 6))[0]
    assert torch.equal(torch.cat([first, second]), images)


# the fixed batch's loss after 30 steps, at most this fraction of the initial weights' loss
# (measured: 0.84 and 0.91; an untrained network stays near 1. LDSeg's latent-noise MSE
# falls slowly in so few steps)
LOSS_DROP = {"imgx-diffseg": 0.9, "ldseg": 0.95}


@pytest.mark.parametrize("family", sorted(LOSS_DROP))
def test_a_few_real_3d_training_steps_lower_the_loss(family, tmp_path, data_dir, isotropic_cases):
    run = recipe_config("verdiff-mr", channels=(8, 16, 32), name=f"tiny3d-{family}", family=family, spatial_dims=3, patch_size=PATCH, spacing_mm=2.0)
    train(run, data_dir, tmp_path, TrainOptions(steps=30, batch_size=2, limit=1, augmentation="none", tensorboard=False, log_every=10))
    card, trained = run_card(run, tmp_path, steps=2, ensemble=2)
    assert card.spatial_dims == 3 and card.patch_size == PATCH and card.spacing_mm == 2.0

    image, mask = PatchSampler(isotropic_cases, PATCH, seed=123, augmentation=PRESETS["none"]).batch(4)
    spec = get_family(family)
    torch.manual_seed(35)  # the run's initial weights
    initial = spec.network(**run.network_arguments)

    def loss(network) -> float:
        objective = objective_for(family, network.train())
        draws = objective.draw(image.shape[0], mask.shape[1:], torch.Generator().manual_seed(0))
        with torch.no_grad():
            return objective(image, mask, **draws)["total"].item()

    before, after = loss(initial), loss(trained)
    assert after < LOSS_DROP[family] * before, (before, after)


def test_the_bundled_3d_model_segments_a_held_out_volume_onto_its_grid():
    card = get_card("imgx3d-mr")
    assert card.spatial_dims == 3 and card.patch_size is not None
    volume = sitk.ReadImage(str(MR_IMAGE))  # VB3_17, held out from training
    calls = []
    result = segment(volume, card, steps=2, ensemble=1, device="cpu", progress=lambda *a: calls.append(a))
    for output in (result.labels, result.uncertainty):
        assert output.GetSize() == volume.GetSize()
        assert np.allclose(output.GetSpacing(), volume.GetSpacing()) and np.allclose(output.GetOrigin(), volume.GetOrigin())
        assert np.allclose(output.GetDirection(), volume.GetDirection())
    truth = sitk.GetArrayViewFromImage(sitk.ReadImage(str(MR_LABELS))) > 0
    assert dice(sitk.GetArrayViewFromImage(result.labels) > 0, truth) > 0.75
    assert result.settings["windows"] == calls[-1][2] and calls[-1][1] == calls[-1][2]
    # cancel is asked between window batches
    seen = []
    with pytest.raises(Cancelled):
        segment(volume, card, steps=2, ensemble=1, device="cpu", batch_size=2, progress=lambda *a: seen.append(a), cancel=lambda: len(seen) > 0)
    assert seen == [("inference", 2, result.settings["windows"])]


def test_a_3d_model_refuses_an_xray_with_one_clear_error():
    card = get_card("imgx3d-mr")
    with pytest.raises(VerdiffError, match="3D model.*X-ray"):
        segment(read_image(xray_image()), card, device="cpu")


def test_3d_configs_are_checked():
    with pytest.raises(ValueError, match="no 3D network"):
        recipe_config("verdiff-mr", family="verdiff-net", spatial_dims=3, patch_size=(16, 32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        recipe_config("verdiff-mr", family="imgx-diffseg", spatial_dims=3, patch_size=(20, 32, 32))
    two_d = recipe_config("verdiff-mr", family="imgx-diffseg")
    assert "spatial_dims" not in two_d.to_dict() and "spatial_dims" not in two_d.network_arguments
