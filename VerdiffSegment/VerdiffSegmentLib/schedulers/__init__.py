"""Diffusion processes as sibling classes, one algorithm per file (as diffusers' schedulers),
behind one interface (``scheduling_utils``): ``set_timesteps(n)``, ``add_noise``,
``initial_sample`` and ``step(model_output, timestep, sample, generator)``.
Verdiff-Net's ``PriorShiftedScheduler`` takes its prior as the explicit keyword ``prior``."""

from .beta_schedules import cosine_betas, linear_betas, make_betas
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .prior_shifted import PriorShiftedScheduler
from .scheduling_utils import DiffusionSchedule, SchedulerOutput, randn_tensor

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DiffusionSchedule",
    "PriorShiftedScheduler",
    "SchedulerOutput",
    "cosine_betas",
    "linear_betas",
    "make_betas",
    "randn_tensor",
]
