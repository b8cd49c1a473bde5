"""ImgX-DiffSeg (paper 002): its network's shapes, the 5 resampled training timesteps, and
recycling (x_t made from the network's own stop-gradient prediction at the next noisier
step). The end-to-end training and segmentation is in test_families.py."""

from __future__ import annotations

import pytest
import torch

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.inferers.x0_ensemble import sample_x0_ensemble
from VerdiffSegmentLib.networks import ImgXUNet
from VerdiffSegmentLib.schedulers import DDPMScheduler
from VerdiffSegmentLib.losses import soft_dice_loss
from training.objectives import objective_for
from training.objectives.imgx_diffseg import Objective

TINY = (8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_objective(**keywords):
    torch.manual_seed(0)
    network = ImgXUNet(num_classes=1, channels=TINY)
    return Objective(network, **keywords) if keywords else objective_for("imgx-diffseg", network)


def batch(size=4, shape=(32, 48), seed=1):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((size, 1, *shape), generator=generator)
    mask = (torch.rand((size, 1, *shape), generator=generator) > 0.6).float()
    return image, mask


@pytest.mark.parametrize("num_classes", [1, 3])
def test_network_predicts_x0_logits_shaped_like_the_mask_on_non_square_inputs(num_classes):
    network = ImgXUNet(in_channels=1, num_classes=num_classes, channels=TINY)
    assert network.input_multiple == 4 and network.num_classes == num_classes
    image = torch.randn(2, 1, 24, 40)
    x_t = torch.randn(2, num_classes, 24, 40)
    logits = network(x_t, torch.tensor([999, 0]), image)
    assert logits.shape == (2, num_classes, 24, 40)
    # the timestep conditions the output
    assert not torch.allclose(logits, network(x_t, torch.tensor([0, 999]), image))


def test_paper_widths_are_the_default():
    network = ImgXUNet()
    assert network.stem.out_channels == 32 and network.middle.conv1.out_channels == 256
    assert network.input_multiple == 8


def test_family_samples_five_steps_on_non_square_slices():
    family = get_family("imgx-diffseg")
    assert family.network is ImgXUNet and family.scheduler is DDPMScheduler
    assert (family.default_steps, family.default_ensemble) == (5, 3)
    scheduler = family.scheduler(**family.scheduler_config)
    scheduler.set_timesteps(family.default_steps)
    network = family.network(num_classes=1, channels=TINY, **family.network_defaults).eval()
    mean, std, diffused = sample_x0_ensemble(network, scheduler, torch.randn(3, 1, 16, 28), 2, torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (3, 1, 16, 28) and diffused == 3
    assert 0 <= mean.min() and mean.max() <= 1 and std.max() > 0


def test_training_timesteps_are_the_five_resampled_ones():
    objective = tiny_objective()
    draws = objective.draw(400, (1, 8, 8), torch.Generator().manual_seed(0))
    assert sorted(set(draws["t"].tolist())) == [0, 250, 500, 749, 999]
    sampler = DDPMScheduler()
    sampler.set_timesteps(5)
    assert set(draws["t"].tolist()) == set(sampler.timesteps.tolist())  # training runs the sampler's steps
    # recycling reads the next noisier kept step; the noisiest has none and is not recycled
    noisier = {0: 250, 250: 500, 500: 749, 749: 999, 999: -1}
    assert all(noisier[t] == r for t, r in zip(draws["t"].tolist(), draws["t_recycle"].tolist()))
    assert draws["recycle"].tolist() == (draws["t"] != 999).tolist()  # the paper recycles every sample it can
    assert draws["noise"].shape == draws["noise_recycle"].shape == (400, 1, 8, 8)
    assert not torch.equal(draws["noise"], draws["noise_recycle"])  # two independent noises


def test_draws_come_from_the_generator_alone():
    objective = tiny_objective()
    first = objective.draw(6, (1, 8, 8), torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global stream must not matter
    second = objective.draw(6, (1, 8, 8), torch.Generator().manual_seed(5))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the coin is drawn whatever its probability, so the rest of the stream is the same
    never = tiny_objective(recycle_probability=0.0).draw(6, (1, 8, 8), torch.Generator().manual_seed(5))
    assert not never["recycle"].any()
    assert all(torch.equal(first[k], never[k]) for k in ("t", "noise", "noise_recycle"))


def fixed_draws(size):
    """Every sample recycled but the last, which sits at the noisiest step."""
    generator = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 250, 749, 999][:size])
    return {
        "t": t,
        "t_recycle": torch.tensor([250, 500, 999, -1][:size]),
        "recycle": t != 999,
        "noise_recycle": torch.randn((size, 1, 32, 48), generator=generator),
        "noise": torch.randn((size, 1, 32, 48), generator=generator),
    }


def test_recycled_x_t_is_the_noised_detached_prediction_at_the_noisier_step():
    objective = tiny_objective()
    image, mask = batch()
    draws = fixed_draws(4)
    x_t = objective.noisy_mask(image, mask, **draws)

    scheduler, x0 = objective.scheduler, 2 * mask - 1
    with torch.no_grad():
        x_noisier = scheduler.add_noise(x0[:3], draws["noise_recycle"][:3], draws["t_recycle"][:3])
        prediction = 2 * objective.network(x_noisier, draws["t_recycle"][:3], image[:3]).sigmoid() - 1
    expected_recycled = scheduler.add_noise(prediction, draws["noise"][:3], draws["t"][:3])
    torch.testing.assert_close(x_t[:3], expected_recycled)
    # the noisiest sample is the true mask noised as usual
    torch.testing.assert_close(x_t[3:], scheduler.add_noise(x0[3:], draws["noise"][3:], draws["t"][3:]))
    # and recycling did change what the network sees
    ground_truth = scheduler.add_noise(x0[:3], draws["noise"][:3], draws["t"][:3])
    assert (x_t[:3] - ground_truth).abs().max() > 0.1


def test_recycling_calls_the_network_at_the_noisier_step_without_gradient():
    objective = tiny_objective()
    image, mask = batch()
    calls = []
    objective.network.register_forward_hook(lambda module, args, out: calls.append((args[1].tolist(), torch.is_grad_enabled())))
    objective(image, mask, **fixed_draws(4))
    assert calls == [([250, 500, 999], False), ([0, 250, 749, 999], True)]


def test_gradient_does_not_flow_through_the_recycled_input():
    """The loss's gradient equals the one with x_t fed in as a constant: nothing flows back
    through the recycling pass (eq. 8's stop-gradient)."""
    objective = tiny_objective()
    image, mask = batch()
    draws = fixed_draws(4)
    objective(image, mask, **draws)["total"].backward()
    through_objective = [p.grad.clone() for p in objective.network.parameters()]
    objective.network.zero_grad()

    x_t = objective.noisy_mask(image, mask, **draws)
    assert not x_t.requires_grad
    logits = objective.network(x_t.detach(), draws["t"], image)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, mask) + soft_dice_loss(logits.sigmoid(), mask)
    loss.backward()
    for recycled, constant in zip(through_objective, (p.grad for p in objective.network.parameters())):
        torch.testing.assert_close(recycled, constant)


def test_loss_is_bce_plus_dice_of_the_predicted_mask():
    objective = tiny_objective()
    image, mask = batch()
    losses = objective(image, mask, **fixed_draws(4))
    assert objective.terms == ("total", "bce", "dice")
    torch.testing.assert_close(losses["total"], losses["bce"] + losses["dice"])
    assert 0 < losses["dice"] < 1 and losses["bce"] > 0


def test_network_sees_x_t_clipped_to_the_mask_range():
    """As the authors' code: x_t enters as a noisy probability map (clipped), not raw noise."""
    torch.manual_seed(0)
    network = ImgXUNet(channels=TINY)
    image, x_t, t = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16) * 3, torch.tensor([500])
    torch.testing.assert_close(network(x_t, t, image), network(x_t.clamp(-1, 1), t, image))
    assert not torch.allclose(network(x_t, t, image), network(-x_t, t, image))


def test_3d_variant_predicts_volumes_and_slides_over_a_larger_one():
    from VerdiffSegmentLib.inferers.sliding_window import sliding_window_inference

    torch.manual_seed(0)
    network = ImgXUNet(num_classes=2, channels=TINY, spatial_dims=3).eval()
    assert all(not isinstance(m, torch.nn.Conv2d) for m in network.modules())
    image, x_t = torch.randn(2, 1, 8, 12, 16), torch.randn(2, 2, 8, 12, 16)
    logits = network(x_t, torch.tensor([999, 0]), image)
    assert logits.shape == (2, 2, 8, 12, 16)
    assert not torch.allclose(logits, network(x_t, torch.tensor([0, 999]), image))  # time reaches every block

    volume = torch.randn(1, 1, 12, 20, 18)
    t = torch.tensor([0])
    with torch.no_grad():
        output = sliding_window_inference(volume, (8, 8, 8), lambda patches: network(torch.zeros(len(patches), 2, 8, 8, 8), t.expand(len(patches)), patches))
    assert output.shape == (1, 2, 12, 20, 18) and torch.isfinite(output).all()
    with pytest.raises(ValueError):
        ImgXUNet(spatial_dims=1)
