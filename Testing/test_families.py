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


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_every_family_widened_to_2_5d_samples_as_its_1_channel_original(family):
    """The 2.5D warm start (``training.checkpoint.fit_image_input``) relies on each family
    reading the image only through convolutions whose first input channels are the image:
    widened, a 1-channel network (random weights: any weights) gives the same probability on
    real MR slices and their neighbours as the original on the slices alone."""
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.preparation import prepare_image
    from training.checkpoint import fit_image_input

    spec = get_family(family)
    torch.manual_seed(7)
    narrow = spec.network(in_channels=1, num_classes=1, channels=TINY, **spec.network_defaults).eval()
    wide = spec.network(in_channels=3, num_classes=1, channels=TINY, **spec.network_defaults)
    wide.load_state_dict(fit_image_input(narrow.state_dict(), wide.state_dict(), 1))
    wide.eval()
    prepared = prepare_image(read_image(str(MR_IMAGE)), 1.25, {"kind": "percentile", "low": 0.5, "high": 99.5}, context_slices=1)
    middle = prepared.stack.shape[0] // 2
    channels = torch.from_numpy(np.ascontiguousarray(prepared.network_input(range(middle - 2, middle + 2))[:, :, 40:104, 60:124]))
    outputs = []
    for network, images in ((narrow, channels[:, 1:2]), (wide, channels)):
        scheduler = None if spec.scheduler is None else spec.scheduler(**spec.scheduler_config)
        if scheduler is not None:
            scheduler.set_timesteps(2)
        outputs.append(spec.sample(network, scheduler, images, 2, torch.Generator().manual_seed(1)))
    assert np.abs(outputs[0][0] - outputs[1][0]).max() < 1e-4 and np.abs(outputs[0][1] - outputs[1][1]).max() < 1e-4
