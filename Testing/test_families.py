"""Every model family end to end on real MR data: the training package trains it (its loss
on a fixed batch drops), and the result segments a real volume through the same pipeline
as the bundled models, onto the input grid.

Each family's own maths has its own tests (test_family_<name>.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from VerdiffSegmentLib.families import FAMILY_MODULES, get_family
from VerdiffSegmentLib.pipeline import segment
from training import datasets
from training.augment import PRESETS
from training.configs import recipe_config
from training.evaluate import run_card
from training.objectives import objective_for
from training.sampler import SliceSampler
from training.train import TrainOptions, train

from conftest import MR_IMAGE

TINY = (8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_batch_loss(family: str, network, image, mask) -> float:
    """The objective's total loss on a fixed batch with fixed random inputs."""
    objective = objective_for(family, network.train())
    draws = objective.draw(image.shape[0], mask.shape[1:], torch.Generator().manual_seed(0))
    with torch.no_grad():
        return objective(image, mask, **draws)["total"].item()


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_a_family_trains_on_real_slices_and_segments_a_real_volume(family, tmp_path, data_dir):
    run = recipe_config("verdiff-mr", channels=TINY, name=f"tiny-{family}", family=family)
    train(run, data_dir, tmp_path, TrainOptions(steps=40, batch_size=4, crop=64, limit=1, augmentation="none", tensorboard=False))

    cases, _ = datasets.training_cases(run, data_dir, limit=1)
    image, mask = SliceSampler(cases, 64, seed=123, augmentation=PRESETS["none"]).batch(8)
    spec = get_family(family)
    torch.manual_seed(35)  # the run's initial weights
    initial = spec.network(num_classes=1, channels=TINY, **spec.network_defaults)
    card, trained = run_card(run, tmp_path, steps=2, ensemble=2)
    before, after = fixed_batch_loss(family, initial, image, mask), fixed_batch_loss(family, trained, image, mask)
    assert after < 0.8 * before, (before, after)

    volume = sitk.ReadImage(str(MR_IMAGE))
    result = segment(volume, card, device="cpu", network=trained.eval(), batch_size=16)
    for output in (result.labels, result.uncertainty):
        assert output.GetSize() == volume.GetSize()
        assert np.allclose(output.GetSpacing(), volume.GetSpacing()) and np.allclose(output.GetOrigin(), volume.GetOrigin())
    uncertainty = sitk.GetArrayViewFromImage(result.uncertainty)
    assert np.isfinite(uncertainty).all() and uncertainty.min() >= 0
    assert result.settings["family"] == family
    if spec.scheduler is not None:
        assert uncertainty.max() > 0, "a diffusion family's ensemble must spread somewhere"
