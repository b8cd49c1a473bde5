"""The deterministic U-Net baseline: the yardstick every diffusion family is compared with.

It is Verdiff-Net's own conditional U-Net (MSFM stem, the same residual levels) trained
alone with BCE + Dice, so "diffusion vs not" is the only difference at equal width. It
has no sampler: steps and ensemble size are ignored and its uncertainty volume is 0 (a
single deterministic prediction has no spread across samples).
"""

from ..inferers.deterministic import predict_deterministic
from ..networks.unet import UNetBaseline
from . import Family

FAMILY = Family(
    name="unet",
    network=UNetBaseline,
    scheduler=None,
    sample=predict_deterministic,
    description="deterministic U-Net baseline (no diffusion, no uncertainty)",
    default_steps=1,
    default_ensemble=1,
)
