"""The prior-shifted diffusion of Verdiff-Net (paper 001, eqs. 2-7), with a K-step sampler.

Verdiff-Net's own scheduler, a sibling of ``DDPMScheduler`` and ``DDIMScheduler`` with their
interface (``scheduling_utils``) plus one explicit input: the prior f. Its forward process,
its start and its reverse step all depend on f, so ``add_noise``, ``predict_x0``,
``initial_sample``, ``posterior`` and ``step`` take it as the keyword-only argument
``prior`` with no default: every call that shifts by the prior says so, and a call that
forgets it fails instead of silently running an unshifted DDPM.

Notation: masks live in [-1, 1] (x0 = 2 * one-hot - 1); f = f(b) is the conditional
U-Net's prior in the same space; a_t = alpha_bar_t; s_t = sqrt(1 - a_t) is the prior's
weight. Timesteps are 0-based as in diffusers: index t means the (t+1)-th of T steps.

Derivation (the coherent reading of eqs. 2, 3, 5, 6, 7). The paper defines the marginal

    q(x_t | x0, f) = N(sqrt(a_t) x0 + s_t f, (1 - a_t) I)                       (eqs. 3, 5)

Its per-step kernel (eq. 2, shift sqrt(1 - alpha_t) f) does not compose to that marginal,
and its posterior mean (eq. 6, "+ sqrt(1 - a_t) f") is not the posterior of either. We
keep eq. 5, the one the training (Algorithm 1) and sampling use, and make the rest
consistent with it: with y_t = x_t - s_t f the process is exactly DDPM in y, so

    q(x_t | x_{t-1}, f) = N(sqrt(alpha_t) x_{t-1} + (s_t - sqrt(alpha_t) s_{t-1}) f, (1 - alpha_t) I)

and the posterior between two kept timesteps t > p (p = t - 1 for the full chain, or the
next timestep of a resampled subsequence, with a_eff = a_t / a_p) is

    q(x_p | x_t, x0, f) = N(mu, sigma^2 I)
    mu      = sqrt(a_p) (1 - a_eff) / (1 - a_t) * x0
              + sqrt(a_eff) (1 - a_p) / (1 - a_t) * (x_t - s_t f)  +  s_p f
    sigma^2 = (1 - a_p) / (1 - a_t) * (1 - a_eff)

The network predicts eps (L_simple, eq. 8); x0 = (x_t - s_t f - sqrt(1 - a_t) eps) / sqrt(a_t),
clipped to [-1, 1], is plugged into mu (eq. 7 is this step written with eps).
Sampling starts from the prior (Algorithm 2 with the shift, ``initial_sample``):
x = sqrt(a_t) f + s_t f + s_t z, the prior standing in for the unknown x0.
Resampling keeps alpha_bar at the chosen timesteps (``DiffusionSchedule``, as ImgX-DiffSeg
and DDIM do), so the number of sampling steps is a free setting from 1 to T; the last step
returns x0. The posterior is DDPM's (``posterior_coefficients``) applied to y, shifted back.
"""

from __future__ import annotations

import torch

from .scheduling_utils import DiffusionSchedule, SchedulerOutput, randn_tensor


class PriorShiftedScheduler(DiffusionSchedule):
    """Forward noising, x0 prediction and the reverse step of the prior-shifted process; the
    network's output is the noise eps.

    Args:
        num_train_timesteps: T (default 1000).
        beta_schedule: "linear" (default, 1e-4 .. 0.02) or "cosine".
        clip_sample: clip the predicted x0 to [-1, 1] (default True).
        start_timestep: where sampling starts (default None: T-1, the paper's full chain). A
            smaller value starts the reverse process part-way, from the prior (see
            ``initial_sample``): the prior is already a good mask, so few steps from t = 300
            refine it as well as more steps from T-1 do, at a fraction of the cost (issue
            "fast by default").

    Use: ``set_timesteps(n)``, ``x = initial_sample(randn_tensor(shape, generator), prior=f)``,
    then for each ``t`` in ``timesteps``: ``x = step(eps, t, x, generator, prior=f).prev_sample``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", clip_sample: bool = True, start_timestep: int | None = None):
        super().__init__(num_train_timesteps, beta_schedule, start_timestep)
        self.clip_sample = clip_sample

    # -- forward process ------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, *, prior: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) f + sqrt(1 - a_t) eps (eq. 5); ``timesteps`` is a batch of indices."""
        a_t = self.alpha_bar_like(timesteps, original_samples)
        s_t = (1 - a_t).sqrt()
        return a_t.sqrt() * original_samples + s_t * prior + s_t * noise

    def predict_x0(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps, *, prior: torch.Tensor) -> torch.Tensor:
        """Invert eq. 5 for x0 given the predicted noise ``model_output``; clipped to [-1, 1] if ``clip_sample``."""
        a_t = self.alpha_bar_like(timesteps, sample)
        s_t = (1 - a_t).sqrt()
        x0 = (sample - s_t * prior - s_t * model_output) / a_t.sqrt()
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0

    # -- reverse process ------------------------------------------------------------------
    def initial_sample(self, noise: torch.Tensor, *, prior: torch.Tensor) -> torch.Tensor:
        """x at the first kept timestep, drawn from q(x_t | x0, f) with the prior standing in
        for the unknown x0: sqrt(a_t) f + s_t f + s_t z. From t = T-1 x0's weight sqrt(a_t) is
        below 0.007 (linear schedule), so this is the paper's start from the prior; from a
        smaller ``start_timestep`` it is SDEdit's: the prior, noised to t, then denoised."""
        a_t = float(self.alpha_bar(int(self.timesteps[0])))
        return (a_t**0.5 + (1 - a_t) ** 0.5) * prior + (1 - a_t) ** 0.5 * noise

    def posterior(self, original_sample: torch.Tensor, sample: torch.Tensor, t: int, t_prev: int, *, prior: torch.Tensor):
        """Mean and variance of q(x_{t_prev} | x_t, x0, f): DDPM's posterior in y = x - s f,
        shifted back by s_{t_prev} f (see the module docstring)."""
        original_coefficient, sample_coefficient, variance = self.posterior_coefficients(t, t_prev)
        s_t, s_p = (1 - float(self.alpha_bar(t))) ** 0.5, (1 - float(self.alpha_bar(t_prev))) ** 0.5
        mean = original_coefficient * original_sample + sample_coefficient * (sample - s_t * prior) + s_p * prior
        return mean, variance

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None, *, prior: torch.Tensor) -> SchedulerOutput:
        """One reverse step from kept timestep ``timestep`` given the predicted noise ``model_output``."""
        x0 = self.predict_x0(model_output, sample, int(timestep), prior=prior)
        t_prev = self.previous_timestep(timestep)
        if t_prev < 0:
            return SchedulerOutput(x0, x0)
        mean, variance = self.posterior(x0, sample, int(timestep), t_prev, prior=prior)
        return SchedulerOutput(mean + variance**0.5 * randn_tensor(sample.shape, generator, sample.device, sample.dtype), x0)
