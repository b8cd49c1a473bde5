"""DDPM with an x0-predicting network (ImgX-DiffSeg, paper 002; VerseDiff-UNet, paper 000).

Masks live in [-1, 1]. The forward process is q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I)
(a_t = alpha_bar_t), and the reverse step between two kept timesteps t > p samples the
posterior q(x_p | x_t, x0) with the network's x0 (the "x0-parameterised" posterior; the
network's output is x0 itself, diffusers' ``prediction_type="sample"``):

    mu      = sqrt(a_p) (1 - a_t / a_p) / (1 - a_t) * x0 + sqrt(a_t / a_p) (1 - a_p) / (1 - a_t) * x_t
    sigma^2 = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)

``set_timesteps(n)`` keeps alpha_bar at the n chosen timesteps (``DiffusionSchedule``), 5 by
default as ImgX-DiffSeg trains and samples.
"""

from __future__ import annotations

import torch

from .scheduling_utils import DiffusionSchedule, SchedulerOutput, randn_tensor


class DDPMScheduler(DiffusionSchedule):
    """Args:
        num_train_timesteps: T (default 1000).
        beta_schedule: "linear" (default, 1e-4 .. 0.02) or "cosine".
        clip_sample: clip the network's x0 to [-1, 1] (default True).
        start_timestep: the first kept timestep (default None: T-1).

    Use: ``set_timesteps(n)``, ``x = initial_sample(randn_tensor(shape, generator))``, then
    for each ``t`` in ``timesteps``: ``x = step(x0_pred, t, x, generator).prev_sample``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", clip_sample: bool = True, start_timestep: int | None = None):
        super().__init__(num_train_timesteps, beta_schedule, start_timestep)
        self.clip_sample = clip_sample

    # -- forward process ------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps; ``timesteps`` is a batch of indices."""
        a_t = self.alpha_bar_like(timesteps, original_samples)
        return a_t.sqrt() * original_samples + (1 - a_t).sqrt() * noise

    # -- reverse process ------------------------------------------------------------------
    def initial_sample(self, noise: torch.Tensor) -> torch.Tensor:
        """x at the first kept timestep with x0 unknown: sqrt(1 - a_t) z (x0's weight, below
        0.007 at T-1 on the linear schedule, is dropped)."""
        a_t = float(self.alpha_bar(int(self.timesteps[0])))
        return (1 - a_t) ** 0.5 * noise

    def posterior(self, original_sample: torch.Tensor, sample: torch.Tensor, t: int, t_prev: int):
        """Mean and variance of q(x_{t_prev} | x_t, x0) (see the module docstring)."""
        original_coefficient, sample_coefficient, variance = self.posterior_coefficients(t, t_prev)
        return original_coefficient * original_sample + sample_coefficient * sample, variance

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None) -> SchedulerOutput:
        """One reverse step from kept timestep ``timestep`` given the network's x0
        (``model_output``, clipped to [-1, 1] if ``clip_sample``)."""
        x0 = model_output.clamp(-1.0, 1.0) if self.clip_sample else model_output
        t_prev = self.previous_timestep(timestep)
        if t_prev < 0:
            return SchedulerOutput(x0, x0)
        mean, variance = self.posterior(x0, sample, int(timestep), t_prev)
        return SchedulerOutput(mean + variance**0.5 * randn_tensor(sample.shape, generator, sample.device, sample.dtype), x0)
