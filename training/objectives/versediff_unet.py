"""VerseDiff-UNet's training step: noise the mask at a uniformly drawn step index (Sec. II-C,
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps), predict x0 from cat(image, x_t), and score that x0.

The paper's loss (Sec. II-C) is DDPM's L2 on the noise, yet its network "directly generates
the predicted mask" x0 (Sec. II-B), so the L2 is taken on what the network predicts: the
mean squared error between the predicted mask 2 sigmoid(logits) - 1 and x0 = 2 mask - 1
(unweighted, as ImgX-DiffSeg; the noise L2 written in x0 would weigh it by a_t / (1 - a_t),
which explodes at small t). A predicted mask is also a segmentation, so BCE + soft Dice on
its logits are added, the terms the U-Net baseline is trained with: the families then
differ in their networks and diffusion, not in what a good mask is scored as.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.schedulers import DDPMScheduler

from . import autocast, mask_logit_loss


class Objective(nn.Module):
    """The network runs under autocast (bf16 on CUDA when asked); the noising and the loss stay
    in float32 (BCE is not autocast-safe)."""

    terms = ("total", "mse", "bce", "dice")

    def __init__(self, network: nn.Module, autocast_dtype: torch.dtype | None = None, scheduler: DDPMScheduler | None = None):
        super().__init__()
        self.network, self.autocast_dtype = network, autocast_dtype
        self.scheduler = scheduler or DDPMScheduler(**get_family("versediff-unet").scheduler_config)

    def draw(self, batch: int, mask_shape, generator: torch.Generator) -> dict[str, torch.Tensor]:
        t = torch.randint(0, self.scheduler.num_train_timesteps, (batch,), generator=generator)
        return {"t": t, "noise": torch.randn((batch, *mask_shape), generator=generator)}

    def forward(self, image, mask, t, noise) -> dict[str, torch.Tensor]:
        x0 = 2 * mask - 1
        x_t = self.scheduler.add_noise(x0, noise, t)
        with autocast(image.device, self.autocast_dtype):
            logits = self.network(x_t, t, image)
        logits = logits.float()
        return mask_logit_loss(self.terms, logits, mask, mse=F.mse_loss(2 * logits.sigmoid() - 1, x0))
