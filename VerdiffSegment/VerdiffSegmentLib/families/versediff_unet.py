"""VerseDiff-UNet (paper 000): an x0-predicting DDPM U-Net with a shape-prior module per level.

Sampling starts from pure noise (no prior mask) and runs the x0-parameterised DDPM posterior
(``DDPMScheduler``) with ``sample_x0_ensemble``; the ensemble's spread is the uncertainty
(the paper samples "n times with different Gaussian noise" for "n different plausible masks").

Defaults, where the paper gives none:
- T = 1000 with the linear beta schedule: the DDPM of Ho et al. that the paper cites [26];
  the network's step-index look-up table has T rows, so ``num_train_timesteps`` is written
  into the card with the network and must equal the scheduler's.
- 5 sampling steps: the network predicts x0 directly, so a few evenly spaced posterior
  steps suffice (as ImgX-DiffSeg samples), and CPU segmentation of a volume stays in the
  time budget of the other families; the paper states no step count.
- 3 ensemble members: the smallest ensemble whose standard deviation is a usable
  uncertainty, and the same as the other diffusion families, so their run times and
  uncertainty volumes compare; the paper leaves n open.
"""

from ..inferers.x0_ensemble import sample_x0_ensemble
from ..networks.versediff_unet import VerseDiffUNet
from ..schedulers.ddpm import DDPMScheduler
from . import Family

FAMILY = Family(
    name="versediff-unet",
    network=VerseDiffUNet,
    scheduler=DDPMScheduler,
    sample=sample_x0_ensemble,
    description="VerseDiff-UNet: x0-predicting DDPM U-Net, image shape priors summed into every decoder level",
    network_defaults={"num_train_timesteps": 1000},
    scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "linear"},
    default_steps=5,
    default_ensemble=3,
)
