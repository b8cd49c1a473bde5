"""Diffusion processes, one algorithm per file, each with ``set_timesteps(n)`` then ``step(...)``."""

from .beta_schedules import cosine_betas, linear_betas, make_betas
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .prior_shifted import PriorShiftedScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "PriorShiftedScheduler", "cosine_betas", "linear_betas", "make_betas"]
