"""VerseDiff-UNet's own properties (paper 000): the step-index look-up table, the shape priors
summed into every decoder level, the x0 objective and the ensemble sampler."""

from __future__ import annotations

import pytest
import torch

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.inferers.x0_ensemble import sample_x0_ensemble
from VerdiffSegmentLib.networks import VerseDiffUNet
from VerdiffSegmentLib.schedulers import DDPMScheduler
from training.objectives import objective_for

CHANNELS = (8, 16, 32, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_network(**keywords) -> VerseDiffUNet:
    torch.manual_seed(0)
    return VerseDiffUNet(channels=CHANNELS, **keywords).eval()


def inputs(batch=2, height=32, width=48, num_classes=1):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 1, height, width, generator=generator)
    x_t = torch.randn(batch, num_classes, height, width, generator=generator)
    return x_t, image


def test_output_is_one_logit_map_per_class_on_non_square_inputs():
    net = small_network(num_classes=2)
    assert net.input_multiple == 8 and net.num_classes == 2
    x_t, image = inputs(batch=3, height=40, width=72, num_classes=2)
    with torch.no_grad():
        logits = net(x_t, torch.tensor([0, 500, 999]), image)
    assert logits.shape == (3, 2, 40, 72)
    assert torch.isfinite(logits).all()


def test_step_index_is_embedded_by_a_learned_look_up_table():
    """Same t, same output; another t, another output; and editing one row of the table
    changes the network at that step index only (a sinusoidal embedding would not)."""
    net = small_network(num_train_timesteps=50)
    assert isinstance(net.time_embedding, torch.nn.Embedding) and net.time_embedding.num_embeddings == 50
    x_t, image = inputs()
    run = lambda step: net(x_t, torch.full((2,), step), image)  # noqa: E731
    with torch.no_grad():
        at_5, at_5_again, at_6 = run(5), run(5), run(6)
        assert torch.equal(at_5, at_5_again)
        assert not torch.allclose(at_5, at_6)
        net.time_embedding.weight[5] += 1.0
        assert not torch.allclose(run(5), at_5)
        assert torch.equal(run(6), at_6)


def test_shape_priors_are_image_features_at_every_level():
    net = small_network()
    _, image = inputs(height=32, width=48)
    with torch.no_grad():
        priors = net.shape_prior(image)
    assert [p.shape for p in priors] == [(2, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate(CHANNELS)]


def test_each_level_continues_from_its_decoder_features_plus_its_shape_prior():
    """I_f = I_D + S_f at the bottleneck and every decoder level: what the next upsampling
    (or the head) receives is the level's block output plus that level's shape prior."""
    net = small_network()
    seen = {}
    record_output = lambda name: lambda module, args, output: seen.__setitem__(name, output)  # noqa: E731
    record_input = lambda name: lambda module, args: seen.__setitem__(name, args[0])  # noqa: E731
    hooks = [net.middle.register_forward_hook(record_output("decoder3"))]
    hooks += [block.register_forward_hook(record_output(f"decoder{2 - i}")) for i, block in enumerate(net.decoder)]
    hooks += [prior.register_forward_hook(record_output(f"prior{i}")) for i, prior in enumerate(net.shape_prior.priors)]
    hooks += [up.register_forward_pre_hook(record_input(f"fused{3 - i}")) for i, up in enumerate(net.up)]
    hooks.append(net.head.register_forward_pre_hook(record_input("fused0")))
    x_t, image = inputs()
    with torch.no_grad():
        net(x_t, torch.tensor([10, 900]), image)
    for hook in hooks:
        hook.remove()
    for level in range(len(CHANNELS)):
        assert torch.count_nonzero(seen[f"prior{level}"]) > 0
        assert torch.allclose(seen[f"fused{level}"], seen[f"decoder{level}"] + seen[f"prior{level}"], atol=1e-6), level


@pytest.mark.parametrize("level", range(len(CHANNELS)))
def test_silencing_one_levels_shape_prior_changes_the_prediction(level):
    net = small_network()
    x_t, image = inputs()
    t = torch.tensor([10, 900])
    with torch.no_grad():
        reference = net(x_t, t, image)
        hook = net.shape_prior.priors[level].register_forward_hook(lambda module, args, output: torch.zeros_like(output))
        silenced = net(x_t, t, image)
        hook.remove()
    assert not torch.allclose(reference, silenced, atol=1e-5)


class _PerfectDenoiser(torch.nn.Module):
    """Reads the mask back from x_t at t = 0 (x_t = x0 up to 1 % noise) as confident logits,
    and records what it was called with."""

    num_classes = 1

    def forward(self, x_t, t, image):
        self.called_with = (x_t, t, image)
        return 50.0 * x_t.sign()


def test_objective_noises_the_mask_in_minus_one_one_and_scores_the_predicted_x0():
    network = _PerfectDenoiser()
    objective = objective_for("versediff-unet", network)
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    image = torch.randn(2, 1, 16, 16)
    draws = objective.draw(2, mask.shape[1:], torch.Generator().manual_seed(0))
    assert set(draws) == {"t", "noise"} and draws["noise"].shape == mask.shape

    perfect = objective(image, mask, t=torch.zeros(2, dtype=torch.long), noise=draws["noise"])
    x_t, _, seen_image = network.called_with
    expected = DDPMScheduler(num_train_timesteps=1000).add_noise(2 * mask - 1, draws["noise"], torch.zeros(2, dtype=torch.long))
    assert torch.equal(x_t, expected) and seen_image is image
    assert set(perfect) == set(objective.terms)
    assert all(value < 1e-3 for value in perfect.values()), perfect

    noisy = objective(image, mask, t=torch.full((2,), 999), noise=draws["noise"])  # x_t carries no mask any more
    assert noisy["total"] > 1.0 and noisy["total"] == noisy["mse"] + noisy["bce"] + noisy["dice"]


def test_ensemble_sampler_gives_probabilities_that_spread_across_members():
    family = get_family("versediff-unet")
    net = small_network(**family.network_defaults)
    scheduler = family.scheduler(**family.scheduler_config)
    scheduler.set_timesteps(family.default_steps)
    images = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(3))
    mean, std, diffused = family.sample(net, scheduler, images, 3, torch.Generator().manual_seed(4))
    assert family.sample is sample_x0_ensemble and diffused == 2
    assert mean.shape == std.shape == (2, 1, 32, 48)
    assert mean.min() >= 0 and mean.max() <= 1
    assert std.max() > 0
