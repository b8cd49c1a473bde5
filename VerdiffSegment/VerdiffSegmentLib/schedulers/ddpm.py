"""DDPM with an x0-predicting network (ImgX-DiffSeg, paper 002; VerseDiff-UNet, paper 000).

Masks live in [-1, 1]. The forward process is q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I)
(a_t = alpha_bar_t), and the reverse step between two kept timesteps t > p samples the
posterior q(x_p | x_t, x0) with the network's x0 (the "x0-parameterised" posterior):

    mu      = sqrt(a_p) (1 - a_t / a_p) / (1 - a_t) * x0 + sqrt(a_t / a_p) (1 - a_p) / (1 - a_t) * x_t
    sigma^2 = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)

This is exactly the prior-shifted process of Verdiff-Net with the prior f = 0, so the
class reuses that scheduler's schedule, resampling (``set_timesteps(n)`` keeps alpha_bar at
the chosen timesteps, 5 by default as ImgX-DiffSeg trains and samples) and posterior,
rather than a second copy of them.
"""

from __future__ import annotations

import torch

from .prior_shifted import PriorShiftedScheduler, _randn_like


class DDPMScheduler(PriorShiftedScheduler):
    """Args: as ``PriorShiftedScheduler`` (num_train_timesteps 1000, beta_schedule "linear",
    clip_sample True).

    Use: ``set_timesteps(n)``, ``x = start(like, generator)``, then for each ``t`` in
    ``timesteps``: ``x, x0 = step(x0_pred, t, x, generator)``.
    """

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps; t is a batch of indices."""
        a_t = self._coefficients(t, x0.shape, x0.device)
        return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise

    def start(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x at the first kept timestep with x0 unknown: sqrt(1 - a_t) z (x0's weight is dropped)."""
        return super().start(torch.zeros_like(like), generator)

    def step(self, x0_pred: torch.Tensor, t: int, x_t: torch.Tensor, generator: torch.Generator | None = None):
        """One reverse step from kept timestep t given the network's x0 (clipped to [-1, 1] if
        ``clip_sample``). Returns ``(x_prev, x0)``; after the last step ``x_prev`` is ``x0``."""
        x0 = x0_pred.clamp(-1.0, 1.0) if self.clip_sample else x0_pred
        t_prev = self.previous_timestep(t)
        if t_prev < 0:
            return x0, x0
        mean, variance = self.posterior(x0, x_t, torch.zeros_like(x_t), int(t), t_prev)
        return mean + variance**0.5 * _randn_like(x_t, generator), x0
