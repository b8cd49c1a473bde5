"""LDSeg (paper 003): latent diffusion segmentation, 2 DDIM steps in a standardised label latent.

The paper trains with the cosine schedule and samples with deterministic DDIM over "K
evenly spaced steps between 1 and T", K = 2. Its denoiser outputs the noise; here the
noise is read from a velocity output (``prediction_type="v_prediction"``, see
``schedulers/ddim.py``): the first of 2 steps is at t = T-1, where alpha_bar is ~1e-9 on
the cosine schedule, and z0 from a noise output would divide its error by sqrt(alpha_bar).
The loss is still the paper's: MSE on the noise that output implies.
"""

from ..inferers.latent_ensemble import sample_latent_ensemble
from ..networks.ldseg import LDSeg
from ..schedulers.ddim import DDIMScheduler
from . import Family

FAMILY = Family(
    name="ldseg",
    network=LDSeg,
    scheduler=DDIMScheduler,
    sample=sample_latent_ensemble,
    description="LDSeg: label and image encoders to a down-sampled latent, conditional latent denoiser (DDIM), softmax label decoder",
    network_defaults={"latent_channels": 4, "time_dim": 64, "heads": 4},
    scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "cosine", "eta": 0.0, "prediction_type": "v_prediction"},
    default_steps=2,
    default_ensemble=3,
    spatial_dims=(2, 3),
)
