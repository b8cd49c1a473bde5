"""The prior-shifted diffusion of Verdiff-Net (paper 001, eqs. 2-7), with a K-step sampler.

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
Sampling starts from the prior (Algorithm 2 with the shift): x_T = s_T f + sqrt(1 - a_T) z.
Resampling keeps alpha_bar at the chosen timesteps (as ImgX-DiffSeg and DDIM do), so the
number of sampling steps is a free setting from 1 to T; the last step returns x0.
"""

from __future__ import annotations

import torch

from .beta_schedules import make_betas


class PriorShiftedScheduler:
    """Forward noising, x0 prediction and the reverse step of the prior-shifted process.

    Args:
        num_train_timesteps: T (default 1000).
        beta_schedule: "linear" (default, 1e-4 .. 0.02) or "cosine".
        clip_sample: clip the predicted x0 to [-1, 1] (default True).
        start_timestep: where sampling starts (default T-1, the paper's full chain). A smaller
            value starts the reverse process part-way, from the prior (see ``start``): the
            prior is already a good mask, so few steps from t = 300 refine it as well as
            more steps from T-1 do, at a fraction of the cost (issue "fast by default").

    Use: ``set_timesteps(n)``, ``x = start(prior, generator)``, then for each ``t`` in
    ``timesteps``: ``x, x0 = step(eps, t, x, prior, generator)``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", clip_sample: bool = True, start_timestep: int | None = None):
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.clip_sample = clip_sample
        self.start_timestep = num_train_timesteps - 1 if start_timestep is None else int(start_timestep)
        if not 0 <= self.start_timestep < num_train_timesteps:
            raise ValueError(f"start_timestep must be between 0 and {num_train_timesteps - 1}, got {start_timestep}")
        self.betas = make_betas(beta_schedule, num_train_timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.set_timesteps(self.start_timestep + 1)

    # -- the schedule -------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Keep ``num_inference_steps`` timesteps, evenly spaced from ``start_timestep`` (T-1 by
        default) down to 0; more steps than that range holds are refused."""
        n = int(num_inference_steps)
        if not 1 <= n <= self.start_timestep + 1:
            raise ValueError(f"sampling steps must be between 1 and {self.start_timestep + 1}, got {num_inference_steps}")
        steps = torch.linspace(self.start_timestep, 0, n, dtype=torch.float64).round().long()
        self.timesteps = torch.unique_consecutive(steps)
        self._previous = {int(t): int(p) for t, p in zip(self.timesteps[:-1], self.timesteps[1:])}
        self._previous[int(self.timesteps[-1])] = -1

    def previous_timestep(self, t: int) -> int:
        """The next kept timestep on the way down, -1 after the last (the clean x0)."""
        return self._previous[int(t)]

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """alpha_bar at 0-based timestep t; alpha_bar(-1) = 1 (the clean mask)."""
        t = torch.as_tensor(t)
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))

    def resampled_alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar of the kept timesteps, ascending: the schedule the sampler actually runs."""
        return self.alphas_cumprod[self.timesteps.flip(0)]

    def _coefficients(self, t, shape, device):
        a_t = self.alpha_bar(t).to(device=device, dtype=torch.float32)
        return a_t.reshape(-1, *([1] * (len(shape) - 1))) if a_t.ndim else a_t

    # -- forward process ------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, prior: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) f + sqrt(1 - a_t) eps (eq. 5); t is a batch of indices."""
        a_t = self._coefficients(t, x0.shape, x0.device)
        s_t = (1 - a_t).sqrt()
        return a_t.sqrt() * x0 + s_t * prior + s_t * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, prior: torch.Tensor, t) -> torch.Tensor:
        """Invert eq. 5 for x0 given the predicted noise; clipped to [-1, 1] if ``clip_sample``."""
        a_t = self._coefficients(t, x_t.shape, x_t.device)
        s_t = (1 - a_t).sqrt()
        x0 = (x_t - s_t * prior - s_t * eps) / a_t.sqrt()
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0

    # -- reverse process ------------------------------------------------------------------
    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, prior: torch.Tensor, t: int, t_prev: int):
        """Mean and variance of q(x_{t_prev} | x_t, x0, f) (see the module docstring)."""
        a_t, a_p = float(self.alpha_bar(t)), float(self.alpha_bar(t_prev))
        a_eff = a_t / a_p
        s_t, s_p = (1 - a_t) ** 0.5, (1 - a_p) ** 0.5
        mean = (
            (a_p**0.5) * (1 - a_eff) / (1 - a_t) * x0
            + (a_eff**0.5) * (1 - a_p) / (1 - a_t) * (x_t - s_t * prior)
            + s_p * prior
        )
        variance = (1 - a_p) / (1 - a_t) * (1 - a_eff)
        return mean, variance

    def start(self, prior: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x at the first kept timestep, drawn from q(x_t | x0, f) with the prior standing in
        for the unknown x0: sqrt(a_t) f + s_t f + s_t z. From t = T-1 x0's weight sqrt(a_t) is
        below 0.007 (linear schedule), so this is the paper's start from the prior; from a
        smaller ``start_timestep`` it is SDEdit's: the prior, noised to t, then denoised."""
        t = int(self.timesteps[0])
        a_t = float(self.alpha_bar(t))
        noise = _randn_like(prior, generator)
        return (a_t**0.5 + (1 - a_t) ** 0.5) * prior + (1 - a_t) ** 0.5 * noise

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, prior: torch.Tensor, generator: torch.Generator | None = None):
        """One reverse step from kept timestep t. Returns ``(x_prev, x0_pred)``; after the last
        step ``x_prev`` is ``x0_pred``."""
        x0 = self.predict_x0(x_t, eps, prior, int(t))
        t_prev = self.previous_timestep(t)
        if t_prev < 0:
            return x0, x0
        mean, variance = self.posterior(x0, x_t, prior, int(t), t_prev)
        return mean + variance**0.5 * _randn_like(x_t, generator), x0


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device (CPU by default) so a seed gives the same
    samples on CPU and CUDA, then moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
