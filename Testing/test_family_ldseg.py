"""LDSeg (paper 003): the standardised label latent, the encoders' depth and attention, DDIM
in the latent, the sampler's shapes and the end-to-end loss."""

from __future__ import annotations

import pytest
import torch

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.networks.ldseg import LDSeg, MultiHeadSelfAttention
from VerdiffSegmentLib.schedulers import DDIMScheduler
from training.objectives import objective_for

TINY = (8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def blob_masks(n: int, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Binary masks of a few random rectangles each, [n, 1, rows, cols]."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, rows, cols)
    for i in range(n):
        for _ in range(3):
            r, c = torch.randint(0, rows - 16, (2,), generator=generator).tolist()
            h, w = torch.randint(8, 40, (2,), generator=generator).tolist()
            masks[i, 0, r : r + h, c : c + (w * cols) // (2 * rows)] = 1
    return masks


def test_label_latent_is_standardised():
    torch.manual_seed(0)
    network = LDSeg().eval()
    with torch.no_grad():
        z = network.encode_label(blob_masks(6, 128, 160))
    assert abs(z.mean().item()) < 1e-4
    assert abs(z.std(unbiased=False).item() - 1) < 1e-2
    # at every latent pixel, so a crop of the latent is standardised as well as the whole
    assert torch.allclose(z.mean(dim=1), torch.zeros(()), atol=1e-5)
    variance = z.var(dim=1, unbiased=False)
    assert variance.max() < 1 + 1e-5
    assert ((variance - 1).abs() < 0.05).float().mean() > 0.99  # below 1 only where the channels nearly agree (the eps)


def test_encoders_down_sample_four_times_and_decode_to_the_input_size():
    network = LDSeg(num_classes=2).eval()
    assert network.input_multiple == 16
    image, mask = torch.randn(2, 1, 144, 208), blob_masks(2, 144, 208).repeat(1, 2, 1, 1)
    with torch.no_grad():
        image_code, z = network.encode_image(image), network.encode_label(mask)
        logits = network.decode(z)
    assert image_code.shape == z.shape == (2, 4, 9, 13)
    assert network.latent_shape(144, 208) == (4, 9, 13)
    assert logits.shape == (2, 3, 144, 208)  # background + 2 labels, softmax across them


def test_depth_follows_the_channel_levels():
    network = LDSeg(channels=TINY).eval()
    assert network.input_multiple == 4
    with torch.no_grad():
        assert network.encode_image(torch.randn(1, 1, 32, 48)).shape == (1, 4, 8, 12)


def test_attention_in_the_image_encoders_last_two_levels_only():
    network = LDSeg()
    has_attention = [any(isinstance(m, MultiHeadSelfAttention) for m in level.modules()) for level in network.image_encoder.levels]
    assert has_attention == [False, False, False, True, True]
    assert not any(isinstance(m, MultiHeadSelfAttention) for m in network.label_encoder.modules())
    # shallower networks keep it only at 1/8 or coarser, where whole slices stay cheap
    for channels, expected in (((8, 16, 32, 64), [False, False, False, True]), (TINY, [False, False, False])):
        levels = LDSeg(channels=channels).image_encoder.levels
        assert [any(isinstance(m, MultiHeadSelfAttention) for m in level.modules()) for level in levels] == expected
    # and it is on the forward path: bypassing it changes the image code
    network.eval()
    image = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        with_attention = network.encode_image(image)
        bypass = [m.register_forward_hook(lambda module, inputs, output: inputs[0]) for m in network.image_encoder.modules() if isinstance(m, MultiHeadSelfAttention)]
        without_attention = network.encode_image(image)
    for hook in bypass:
        hook.remove()
    assert (with_attention - without_attention).abs().max() > 1e-4


@pytest.mark.parametrize("config", [{}, {"beta_schedule": "cosine", "prediction_type": "v_prediction"}])
@pytest.mark.parametrize("steps", [1, 2, 7, 1000])
def test_ddim_with_an_oracle_recovers_the_latent(config, steps):
    """Given the true noise of z_T (or its velocity), deterministic DDIM walks the forward
    path of that noise back: z at every kept timestep is add_noise(z0, eps, t), then z0."""
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(steps)
    # float64: in float32, rounding amplified by 1/sqrt(a_t) (150 near t = T-1) drifts 1e-3 over 1000 steps
    z0, eps = (torch.randn(2, 4, 5, 6, generator=generator, dtype=torch.float64) for _ in range(2))

    def at(t: int) -> torch.Tensor:
        return scheduler.add_noise(z0, eps, torch.full((2,), t)) if t >= 0 else z0

    z = at(int(scheduler.timesteps[0]))
    for t in scheduler.timesteps.tolist():
        output = eps if scheduler.prediction_type == "epsilon" else scheduler.velocity(z0, eps, torch.full((2,), t))
        z, z0_estimate = scheduler.step(output, t, z)
        assert torch.allclose(z0_estimate, z0, atol=1e-4), (t, (z0_estimate - z0).abs().max())
        assert torch.allclose(z, at(scheduler.previous_timestep(t)), atol=1e-4), t
    assert torch.allclose(z, z0, atol=1e-4)


def test_ddim_keeps_alpha_bar_at_the_chosen_timesteps():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [999, 0]  # the paper's 2 evenly spaced steps in 1..T
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [999, 749, 500, 250, 0]
    assert torch.equal(scheduler.resampled_alphas_cumprod(), scheduler.alphas_cumprod[[0, 250, 500, 749, 999]])
    # one step from 749 to 500 uses the trained alpha_bar at both, not a re-derived schedule
    generator = torch.Generator().manual_seed(0)
    z_t, eps = torch.randn(1, 4, 3, 3, generator=generator), torch.randn(1, 4, 3, 3, generator=generator)
    a_t, a_p = scheduler.alphas_cumprod[749].item(), scheduler.alphas_cumprod[500].item()
    z0 = (z_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    z_prev, z0_step = scheduler.step(eps, 749, z_t)
    assert torch.allclose(z0_step, z0, atol=1e-5)
    assert torch.allclose(z_prev, a_p**0.5 * z0 + (1 - a_p) ** 0.5 * eps, atol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_and_v_matches_eps():
    scheduler = DDIMScheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(3)
    z0, noise, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 400, 999])
    z_t = scheduler.add_noise(z0, noise, t)
    v = scheduler.velocity(z0, noise, t)
    assert torch.allclose(scheduler.predict_epsilon(v, z_t, t), noise, atol=1e-5)
    assert torch.allclose(scheduler.predict_x0(v, z_t, t), z0, atol=1e-5)
    first = scheduler.step(v[:1], 999, z_t[:1], torch.Generator().manual_seed(1))[0]
    second = scheduler.step(v[:1], 999, z_t[:1], torch.Generator().manual_seed(2))[0]
    assert torch.equal(first, second)


def test_sampler_shapes_on_non_square_slices():
    family = get_family("ldseg")
    torch.manual_seed(0)
    network = family.network(num_classes=2, channels=TINY, **family.network_defaults).eval()
    scheduler = family.scheduler(**family.scheduler_config)
    scheduler.set_timesteps(family.default_steps)
    mean, std, diffused = family.sample(network, scheduler, torch.randn(3, 1, 40, 72), 4, torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (3, 2, 40, 72)
    assert diffused == 3
    assert ((mean >= 0) & (mean <= 1)).all() and (std >= 0).all() and std.max() > 0  # members start from their own noise
    again, _, _ = family.sample(network, scheduler, torch.randn(3, 1, 40, 72), 4, torch.Generator().manual_seed(0))
    assert again.shape == mean.shape


def test_end_to_end_loss_reaches_all_four_parts_and_draws_only_from_the_generator():
    torch.manual_seed(0)
    network = LDSeg(channels=TINY).train()
    objective = objective_for("ldseg", network)
    image, mask = torch.randn(2, 1, 32, 48), blob_masks(2, 32, 48)
    draws = objective.draw(2, mask.shape[1:], torch.Generator().manual_seed(5))
    assert draws["noise"].shape == (2, 4, 8, 12)
    assert all(torch.equal(draws[k], v) for k, v in objective.draw(2, mask.shape[1:], torch.Generator().manual_seed(5)).items())
    losses = objective(image, mask, **draws)
    assert set(losses) == set(objective.terms)
    expected = losses["ce"] + 2 * losses["dice"] + losses["mse"]  # gamma = 2, lambda = 1
    assert torch.allclose(losses["total"], expected)
    losses["total"].backward()
    for part in (network.label_encoder, network.image_encoder, network.denoiser, network.label_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_3d_variant_encodes_samples_and_trains_on_volumes():
    """The paper's 3D variant: the same parts on [B, C, D, H, W], non-cubic."""
    torch.manual_seed(0)
    family = get_family("ldseg")
    network = LDSeg(channels=TINY, spatial_dims=3)
    volume, mask = torch.randn(2, 1, 16, 24, 32), blob_masks(2, 24, 32)[:, :, None].repeat(1, 1, 16, 1, 1)
    objective = objective_for("ldseg", network.train())
    draws = objective.draw(2, mask.shape[1:], torch.Generator().manual_seed(0))
    assert draws["noise"].shape == (2, 4, 4, 6, 8)
    losses = objective(volume, mask, **draws)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    scheduler = family.scheduler(**family.scheduler_config)
    scheduler.set_timesteps(2)
    mean, std, diffused = family.sample(network.eval(), scheduler, volume, 3, torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (2, 1, 16, 24, 32) and diffused == 2
