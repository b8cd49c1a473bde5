"""The maths of the prior-shifted diffusion (paper 001, eqs. 2-7) and the K-step sampler,
DDPM's x0 posterior, and the one interface the sibling schedulers share."""

from __future__ import annotations

import inspect

import pytest
import torch

from VerdiffSegmentLib.schedulers import DDIMScheduler, DDPMScheduler, PriorShiftedScheduler, SchedulerOutput, cosine_betas, linear_betas, randn_tensor


def test_linear_schedule_matches_ddpm():
    betas = linear_betas()
    assert betas.shape == (1000,)
    assert abs(betas[0].item() - 1e-4) < 1e-12 and abs(betas[-1].item() - 0.02) < 1e-12


def test_cosine_schedule_alpha_bar_decreases_to_zero():
    alpha_bar = torch.cumprod(1 - cosine_betas(), 0)
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])
    assert alpha_bar[-1] < 1e-4 and alpha_bar[0] > 0.999


def test_forward_marginal_mean_and_variance():
    """x_t = sqrt(a) x0 + sqrt(1-a) f + sqrt(1-a) eps has mean sqrt(a) x0 + sqrt(1-a) f and variance 1-a."""
    scheduler = PriorShiftedScheduler()
    generator = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    prior = torch.full((n, 1, 1, 1), -0.4)
    for t in (0, 100, 500, 999):
        a = scheduler.alphas_cumprod[t].item()
        noise = torch.randn(x0.shape, generator=generator)
        x_t = scheduler.add_noise(x0, noise, torch.full((n,), t), prior=prior)
        expected_mean = a**0.5 * 0.7 + (1 - a) ** 0.5 * -0.4
        assert abs(x_t.mean().item() - expected_mean) < 0.01
        assert abs(x_t.var().item() - (1 - a)) < 0.01 * max(1 - a, 0.01) + 2e-4


def test_posterior_matches_gaussian_conditioning():
    """The step's posterior equals Bayes' rule applied to the marginal and the forward kernel,
    computed independently here, for full-chain and resampled (skipping) steps."""
    scheduler = PriorShiftedScheduler()
    x0, x_t, prior = torch.tensor(0.8), torch.tensor(-0.3), torch.tensor(0.5)
    for t, p in ((10, 9), (500, 499), (999, 750), (400, 100), (300, -1)):
        a_t, a_p = scheduler.alpha_bar(t).item(), scheduler.alpha_bar(p).item()
        s_t, s_p = (1 - a_t) ** 0.5, (1 - a_p) ** 0.5
        alpha = a_t / a_p
        # prior on x_p: the marginal; likelihood of x_t given x_p: the consistent forward kernel
        m_p, v_p = a_p**0.5 * x0 + s_p * prior, 1 - a_p
        shift = (s_t - alpha**0.5 * s_p) * prior
        v_l = 1 - alpha
        gain = v_p * alpha**0.5 / (alpha * v_p + v_l) if v_p > 0 else 0.0
        expected_mean = m_p + gain * (x_t - (alpha**0.5 * m_p + shift))
        expected_var = v_p * v_l / (alpha * v_p + v_l) if v_p > 0 else 0.0
        mean, var = scheduler.posterior(x0, x_t, t, p, prior=prior)
        assert abs(mean.item() - expected_mean.item()) < 1e-6, (t, p)
        assert abs(var - expected_var) < 1e-9, (t, p)


def test_kernel_composes_to_the_marginal():
    """The derived one-step kernel, applied along the chain, reproduces eq. 5's marginal."""
    scheduler = PriorShiftedScheduler()
    x0, prior = 0.6, -0.2
    mean, var = x0, 0.0
    a_prev = 1.0
    for t in range(1000):
        a_t = scheduler.alphas_cumprod[t].item()
        alpha = a_t / a_prev
        shift = ((1 - a_t) ** 0.5 - alpha**0.5 * (1 - a_prev) ** 0.5) * prior
        mean, var = alpha**0.5 * mean + shift, alpha * var + (1 - alpha)
        a_prev = a_t
        if t in (0, 10, 500, 999):
            assert abs(mean - (a_t**0.5 * x0 + (1 - a_t) ** 0.5 * prior)) < 1e-9
            assert abs(var - (1 - a_t)) < 1e-9


def test_resampled_schedule_keeps_alpha_bar_at_chosen_timesteps():
    scheduler = PriorShiftedScheduler()
    for n in (1, 2, 5, 10, 50, 1000):
        scheduler.set_timesteps(n)
        assert len(scheduler.timesteps) == n
        assert scheduler.timesteps[0] == 999 and torch.all(scheduler.timesteps[1:] < scheduler.timesteps[:-1])
        kept = scheduler.resampled_alphas_cumprod()
        assert torch.equal(kept, scheduler.alphas_cumprod[scheduler.timesteps.flip(0)])
        # the effective betas of the subsequence rebuild the same alpha_bar
        alphas = kept / torch.cat([torch.ones(1, dtype=kept.dtype), kept[:-1]])
        assert torch.allclose(torch.cumprod(alphas, 0), kept, rtol=1e-12)


def test_invalid_step_counts_are_refused():
    scheduler = PriorShiftedScheduler()
    for bad in (0, -3, 1001):
        try:
            scheduler.set_timesteps(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} steps accepted")


def test_sampler_with_oracle_network_recovers_known_mask():
    """A network that returns the true noise (computed from the known x0) makes every step land
    on x0's posterior; the last step returns x0 exactly, for any number of steps."""
    scheduler = PriorShiftedScheduler()
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 10:20] = 1
    x0 = 2 * mask - 1
    prior = (x0 * 0.3 + 0.1 * torch.randn(x0.shape, generator=generator)).clamp(-1, 1)
    for steps in (1, 3, 10, 100):
        scheduler.set_timesteps(steps)
        x = scheduler.initial_sample(randn_tensor(prior.shape, generator), prior=prior)
        for t in scheduler.timesteps:
            a = scheduler.alpha_bar(int(t)).item()
            oracle_eps = (x - a**0.5 * x0 - (1 - a) ** 0.5 * prior) / (1 - a) ** 0.5
            x, x0_pred = scheduler.step(oracle_eps, int(t), x, generator, prior=prior)
        assert torch.allclose(x, x0, atol=1e-4), steps


def test_ddpm_x0_posterior_matches_the_closed_form():
    """DDPM (ImgX-DiffSeg, VerseDiff-UNet): the step's posterior with the network's x0 is Ho et
    al.'s eq. 7 (beta_tilde and mu_tilde), written here with betas over a resampled jump."""
    scheduler = DDPMScheduler()
    x0, x_t = torch.tensor(0.6), torch.tensor(-0.2)
    for t, p in ((10, 9), (999, 998), (800, 600)):
        a_t, a_p = scheduler.alpha_bar(t).item(), scheduler.alpha_bar(p).item()
        beta = 1 - a_t / a_p  # the jump's effective beta
        mu = (a_p**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_p) / (1 - a_t)) * x_t
        var = (1 - a_p) / (1 - a_t) * beta
        mean, variance = scheduler.posterior(x0, x_t, t, p)
        assert abs(mean.item() - mu.item()) < 1e-6 and abs(variance - var) < 1e-9, (t, p)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x0s = torch.ones(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    a = scheduler.alpha_bar(t).float().reshape(-1, 1, 1, 1)
    assert torch.allclose(scheduler.add_noise(x0s, noise, t), a.sqrt() * x0s + (1 - a).sqrt() * noise)


def test_ddpm_sampler_fed_the_true_x0_returns_it():
    scheduler = DDPMScheduler()
    generator = torch.Generator().manual_seed(0)
    x0 = -torch.ones(1, 1, 16, 16)
    x0[..., 4:12, 4:12] = 1
    for steps in (1, 5, 50):
        scheduler.set_timesteps(steps)
        x = scheduler.initial_sample(randn_tensor(x0.shape, generator))
        for t in scheduler.timesteps:
            x, _ = scheduler.step(x0, int(t), x, generator)
        assert torch.equal(x, x0), steps


SCHEDULERS = (DDPMScheduler, DDIMScheduler, PriorShiftedScheduler)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_every_scheduler_keeps_the_positional_interface(scheduler_class):
    """Siblings behind one interface (as diffusers): the same positional parameters in
    ``add_noise``, ``initial_sample`` and ``step``; a process-specific input (the prior) only
    as a keyword-only argument; and no scheduler is a subclass of another."""
    interface = {
        "add_noise": ["original_samples", "noise", "timesteps"],
        "initial_sample": ["noise"],
        "step": ["model_output", "timestep", "sample", "generator"],
        "set_timesteps": ["num_inference_steps"],
    }
    for method, expected in interface.items():
        parameters = list(inspect.signature(getattr(scheduler_class, method)).parameters.values())[1:]
        positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == expected, (method, positional)
        extra = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
        assert extra == (["prior"] if scheduler_class is PriorShiftedScheduler and method != "set_timesteps" else []), (method, extra)
    assert not any(issubclass(scheduler_class, other) for other in SCHEDULERS if other is not scheduler_class)
    # every config key has a default: a card's ``scheduler`` section may leave any out
    assert all(p.default is not p.empty for p in list(inspect.signature(scheduler_class).parameters.values()))


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_a_step_returns_the_previous_and_the_clean_sample(scheduler_class):
    scheduler = scheduler_class()
    scheduler.set_timesteps(3)
    generator = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 1, 4, 4, generator=generator), torch.randn(2, 1, 4, 4, generator=generator).tanh()
    shift = {"prior": torch.zeros_like(sample)} if scheduler_class is PriorShiftedScheduler else {}
    first = scheduler.step(output, int(scheduler.timesteps[0]), sample, torch.Generator().manual_seed(1), **shift)
    assert isinstance(first, SchedulerOutput) and first.prev_sample.shape == first.pred_original_sample.shape == sample.shape
    assert not torch.equal(first.prev_sample, first.pred_original_sample)  # a step on the way down
    last = scheduler.step(output, int(scheduler.timesteps[-1]), sample, **shift)
    assert torch.equal(last.prev_sample, last.pred_original_sample)  # the last step hands back the clean estimate


def test_the_prior_shift_is_ddpm_in_the_shifted_variable():
    """With y = x - s_t f the prior-shifted process is DDPM in y (prior_shifted's docstring):
    noising, and the posterior mean at any prior, are DDPM's in y shifted back by s f."""
    shifted, plain = PriorShiftedScheduler(), DDPMScheduler()
    generator = torch.Generator().manual_seed(2)
    x0, noise, prior = (torch.randn(3, 1, 5, 5, generator=generator) for _ in range(3))
    t = torch.tensor([10, 400, 999])
    s = (1 - shifted.alpha_bar(t).float()).sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(shifted.add_noise(x0, noise, t, prior=prior), plain.add_noise(x0, noise, t) + s * prior)
    x_t = torch.randn(1, 1, 5, 5, generator=generator)
    for step, previous in ((999, 750), (400, 100), (10, 9)):
        s_t, s_p = ((1 - shifted.alpha_bar(k).item()) ** 0.5 for k in (step, previous))
        mean, variance = shifted.posterior(x0[:1], x_t, step, previous, prior=prior[:1])
        plain_mean, plain_variance = plain.posterior(x0[:1], x_t - s_t * prior[:1], step, previous)
        torch.testing.assert_close(mean, plain_mean + s_p * prior[:1])
        assert variance == plain_variance
