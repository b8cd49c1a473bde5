"""ImgX-DiffSeg (paper 002): a U-Net on cat(image, x_t) predicting the x0 mask logits, DDPM
with the variance schedule resampled to 5 steps for both training and sampling."""

from ..inferers.x0_ensemble import sample_x0_ensemble
from ..networks.imgx_unet import ImgXUNet
from ..schedulers.ddpm import DDPMScheduler
from . import Family

FAMILY = Family(
    name="imgx-diffseg",
    network=ImgXUNet,
    scheduler=DDPMScheduler,
    sample=sample_x0_ensemble,
    description="ImgX-DiffSeg: x0-predicting U-Net trained with Dice + cross-entropy and recycling, 5-step DDPM",
    network_defaults={"time_dim": 64},
    scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "linear"},
    default_steps=5,
    default_ensemble=3,
    spatial_dims=(2, 3),
)
