"""Verdiff-Net (paper 001): conditional U-Net prior + NSA diffusion U-Net, prior-shifted diffusion."""

from ..inferers.ensemble import sample_ensemble
from ..networks.verdiff_net import VerdiffNet
from ..schedulers.prior_shifted import PriorShiftedScheduler
from . import Family

FAMILY = Family(
    name="verdiff-net",
    network=VerdiffNet,
    scheduler=PriorShiftedScheduler,
    sample=sample_ensemble,
    description="Verdiff-Net: MSFM prior U-Net + NSA diffusion U-Net, sampling starts from the prior",
    network_defaults={"time_dim": 64},
    scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "linear"},
)
