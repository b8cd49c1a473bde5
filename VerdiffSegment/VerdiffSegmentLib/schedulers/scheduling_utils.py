"""What the schedulers share (as diffusers' ``scheduling_utils``): a step's output, the noise
draw, and the training schedule with the timesteps a sampler keeps.

Every scheduler is a sibling class in its own file with this interface (the families'
samplers, the training objectives, the pipeline and the cards rely on nothing else):

- built from keyword arguments, each with a default, so a card's ``scheduler`` section is
  passed as it is (``Scheduler(**card["scheduler"])``);
- ``num_train_timesteps``, ``start_timestep``, ``alphas_cumprod``;
- ``set_timesteps(num_inference_steps)``, then ``timesteps`` (descending) and
  ``previous_timestep(t)``;
- ``add_noise(original_samples, noise, timesteps)``: the forward process, a batch of
  timesteps;
- ``initial_sample(noise)``: where the reverse process starts, given standard normal
  ``noise`` (drawn with ``randn_tensor``), at ``timesteps[0]``;
- ``step(model_output, timestep, sample, generator=None)`` -> ``SchedulerOutput``: one
  reverse step from a kept timestep; after the last one ``prev_sample`` is the clean
  estimate.

A process with one more input takes it as a keyword-only argument of those methods and
keeps the positional ones: Verdiff-Net's ``PriorShiftedScheduler`` takes ``prior=`` in
``add_noise``, ``initial_sample`` and ``step``, so the shift is written at every call
that depends on it. No scheduler subclasses another: what they share is
``DiffusionSchedule`` below, which has no process-specific method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .beta_schedules import make_betas


class SchedulerOutput(NamedTuple):
    """A reverse step's result (diffusers' names); unpacks as ``prev_sample, pred_original_sample``."""

    prev_sample: torch.Tensor  # the sample at the previous kept timestep (the clean estimate after the last)
    pred_original_sample: torch.Tensor  # the step's estimate of the clean sample x0


def randn_tensor(shape, generator: torch.Generator | None = None, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default) so a seed gives
    the same samples on CPU and CUDA, then moved to ``device``."""
    draw_on = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype)
    return noise if device is None else noise.to(device)


class DiffusionSchedule:
    """The training noise schedule and the timesteps a sampler keeps, shared by every scheduler.

    Timesteps are 0-based as in diffusers: index t means the (t+1)-th of T steps.
    ``set_timesteps(n)`` keeps n timesteps evenly spaced from ``start_timestep`` down to 0
    and the trained alpha_bar at them (the resampling of ImgX-DiffSeg and DDIM), so the
    number of sampling steps is a free setting from 1 to ``start_timestep + 1``.

    Args:
        num_train_timesteps: T (default 1000).
        beta_schedule: "linear" (default, 1e-4 .. 0.02) or "cosine" (``beta_schedules``).
        start_timestep: the first kept timestep (default None: T-1, the full chain).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", start_timestep: int | None = None):
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.start_timestep = num_train_timesteps - 1 if start_timestep is None else int(start_timestep)
        if not 0 <= self.start_timestep < num_train_timesteps:
            raise ValueError(f"start_timestep must be between 0 and {num_train_timesteps - 1}, got {start_timestep}")
        self.betas = make_betas(beta_schedule, num_train_timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.set_timesteps(self.start_timestep + 1)

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
        """The next kept timestep on the way down, -1 after the last (the clean sample)."""
        return self._previous[int(t)]

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """alpha_bar at 0-based timestep t (float64); alpha_bar(-1) = 1 (the clean sample)."""
        t = torch.as_tensor(t).cpu()  # the schedule lives on the CPU in float64; a CUDA batch of timesteps indexes it there
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))

    def resampled_alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar of the kept timesteps, ascending: the schedule the sampler actually runs."""
        return self.alphas_cumprod[self.timesteps.flip(0)]

    def posterior_coefficients(self, t: int, t_prev: int) -> tuple[float, float, float]:
        """DDPM's posterior q(x_p | x_t, x0) = N(c0 x0 + c1 x_t, variance) between two kept
        timesteps t > p (a_eff = a_t / a_p, the jump's alpha), in float64:
        c0 = sqrt(a_p) (1 - a_eff) / (1 - a_t), c1 = sqrt(a_eff) (1 - a_p) / (1 - a_t),
        variance = (1 - a_p) / (1 - a_t) (1 - a_eff)."""
        a_t, a_p = float(self.alpha_bar(t)), float(self.alpha_bar(t_prev))
        a_eff = a_t / a_p
        original_coefficient = (a_p**0.5) * (1 - a_eff) / (1 - a_t)
        sample_coefficient = (a_eff**0.5) * (1 - a_p) / (1 - a_t)
        variance = (1 - a_p) / (1 - a_t) * (1 - a_eff)
        return original_coefficient, sample_coefficient, variance

    def alpha_bar_like(self, t, sample: torch.Tensor) -> torch.Tensor:
        """alpha_bar at t as float32 on ``sample``'s device, shaped to broadcast over a batch
        of samples when t is a batch of timesteps (a scalar t stays a scalar)."""
        a_t = self.alpha_bar(t).to(device=sample.device, dtype=torch.float32)
        return a_t.reshape(-1, *([1] * (sample.dim() - 1))) if a_t.ndim else a_t
