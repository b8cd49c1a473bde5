"""DDIM (Song et al. 2021) for unbounded latents: LDSeg's sampler (paper 003).

Forward process as DDPM: z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps (a_t = alpha_bar_t). The
reverse step between two kept timesteps t > p, with the network's noise estimate eps and
z0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t), is

    z_p = sqrt(a_p) z0 + sqrt(1 - a_p - sigma^2) eps + sigma n,
    sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)

deterministic for eta = 0 (the paper's choice), the DDPM posterior for eta = 1. The last
step returns z0. With the true noise of a latent as eps, every step returns that latent
exactly, whatever the number of steps.

The network's output may be the noise itself (``prediction_type="epsilon"``, the default)
or the velocity v = sqrt(a_t) eps - sqrt(1 - a_t) z0 (``"v_prediction"``, Salimans & Ho
2022), converted here to the noise and z0. Both give the same process; v keeps z0 well
conditioned where a_t is tiny (z0 from eps divides by sqrt(a_t), 1/156 at t = T on the
linear schedule), which is exactly where a 2-step sampler takes its first step.

Timesteps are 0-based; ``set_timesteps(n)`` keeps n evenly spaced from T-1 down to 0 and
alpha_bar at those timesteps (``DiffusionSchedule``, shared by every scheduler). The
paper's "K evenly spaced steps between 1 and T inclusive" is this with K = n.
"""

from __future__ import annotations

import torch

from .scheduling_utils import DiffusionSchedule, SchedulerOutput, randn_tensor

PREDICTION_TYPES = ("epsilon", "v_prediction")


class DDIMScheduler(DiffusionSchedule):
    """Args:
        num_train_timesteps: T (default 1000).
        beta_schedule: "linear" (default, 1e-4 .. 0.02) or "cosine".
        eta: the stochasticity of a step, 0 (default, deterministic DDIM) to 1 (DDPM).
        prediction_type: what the network outputs, "epsilon" (default) or "v_prediction".

    Use: ``set_timesteps(n)``, ``z = initial_sample(randn_tensor(shape, generator))``, then
    for each ``t`` in ``timesteps``: ``z = step(model_output, t, z, generator).prev_sample``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", eta: float = 0.0, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be between 0 and 1, got {eta}")
        super().__init__(num_train_timesteps, beta_schedule)  # no clip_sample: latents are unbounded
        self.eta = eta
        self.prediction_type = prediction_type

    # -- forward process ------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps; ``timesteps`` is a batch of indices."""
        a_t = self.alpha_bar_like(timesteps, original_samples)
        return a_t.sqrt() * original_samples + (1 - a_t).sqrt() * noise

    def velocity(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) eps - sqrt(1 - a_t) z0: the target of a v-predicting network."""
        a_t = self.alpha_bar_like(timesteps, original_samples)
        return a_t.sqrt() * noise - (1 - a_t).sqrt() * original_samples

    # -- the network's output as noise and as z0 -------------------------------------------
    def predict_epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps) -> torch.Tensor:
        """The noise estimate: the output itself, or sqrt(a_t) v + sqrt(1 - a_t) z_t."""
        if self.prediction_type == "epsilon":
            return model_output
        a_t = self.alpha_bar_like(timesteps, sample)
        return a_t.sqrt() * model_output + (1 - a_t).sqrt() * sample

    def predict_x0(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps) -> torch.Tensor:
        """The clean latent estimate: (z_t - sqrt(1 - a_t) eps) / sqrt(a_t), or sqrt(a_t) z_t - sqrt(1 - a_t) v."""
        a_t = self.alpha_bar_like(timesteps, sample)
        if self.prediction_type == "epsilon":
            return (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        return a_t.sqrt() * sample - (1 - a_t).sqrt() * model_output

    # -- reverse process ------------------------------------------------------------------
    def initial_sample(self, noise: torch.Tensor) -> torch.Tensor:
        """z at the first kept timestep: the noise itself, N(0, I) (the paper's z_T; z0's weight
        sqrt(a_t) at t = T-1 is below 0.007 on either schedule)."""
        return noise

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None) -> SchedulerOutput:
        """One reverse step from kept timestep ``timestep``; ``generator`` is used only when eta > 0."""
        t = int(timestep)
        z0 = self.predict_x0(model_output, sample, t)
        t_prev = self.previous_timestep(t)
        if t_prev < 0:
            return SchedulerOutput(z0, z0)
        eps = self.predict_epsilon(model_output, sample, t)
        # alpha_bar as add_noise and predict_x0 round it (float32), so that a deterministic
        # step lands exactly where the next step's z0 estimate inverts it
        a_t, a_p = (self.alpha_bar_like(s, sample) for s in (t, t_prev))
        sigma = self.eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
        z_prev = a_p.sqrt() * z0 + (1 - a_p - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0:
            z_prev = z_prev + sigma * randn_tensor(sample.shape, generator, sample.device, sample.dtype)
        return SchedulerOutput(z_prev, z0)
