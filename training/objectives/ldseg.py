"""LDSeg's end-to-end training step (paper 003, Algorithm 1, eqs. 9-18).

z_i = f_image-enc(X), z_l(0) = f_label-enc(y), z_l(t) = sqrt(a_t) z_l(0) + sqrt(1 - a_t) eps
at a uniform t, the denoiser's output read by the family's ``DDIMScheduler`` as noise and
as the clean latent, and

    L = CE(y^, y) + gamma Dice(y^, y) + lambda ||eps^ - eps||^2,   gamma = 2, lambda = 1 (eq. 18)

with y^ = softmax(f_label-dec(z_dn)). All four parts get the gradient of the one loss.

Decisions where the paper is vague:
- z_dn. Eq. 12 writes z_dn = z_l(t) - f_denoiser(...), which is not an estimate of the
  clean latent at any t but t = 0 (it leaves sqrt(a_t) z_l(0) plus a multiple of the
  noise). Here z_dn is the clean-latent estimate the sampler's last DDIM step hands the
  decoder, (z_t - sqrt(1 - a_t) eps^) / sqrt(a_t) (from the velocity output:
  sqrt(a_t) z_t - sqrt(1 - a_t) v^), so the decoder is trained on what it decodes at
  inference and the segmentation loss reaches the denoiser at every t, high noise
  included, where a 2-step sampler takes its first step.
- CE over background + labels (the target's background is "no label"), the decoder's
  softmax inside ``cross_entropy``; soft Dice over the label channels only (background
  Dice is near 1 and would dilute the term), as the other families.
- eps is drawn per sample (the reference code repeats one noise across the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.losses import soft_dice_loss
from VerdiffSegmentLib.networks.ldseg import label_probabilities
from VerdiffSegmentLib.schedulers import DDIMScheduler

from . import autocast, non_finite


def class_index(mask: torch.Tensor) -> torch.Tensor:
    """{0, 1} label channels [B, classes, *spatial] -> class index map, 0 where no label is set."""
    background = 1 - mask.amax(dim=1, keepdim=True)
    return torch.cat([background, mask], dim=1).argmax(dim=1)


class Objective(nn.Module):
    """The networks run under autocast (bf16 on CUDA when asked); the noising, the latent
    estimates and the loss stay in float32.

    Args:
        network: an ``LDSeg``.
        autocast_dtype: autocast dtype, or None (default) for float32.
        scheduler: the diffusion (default: the family's ``DDIMScheduler`` config).
        dice_weight: gamma (default 2, the paper's).
        noise_weight: lambda (default 1, the paper's).
    """

    terms = ("total", "ce", "dice", "mse")

    def __init__(self, network: nn.Module, autocast_dtype: torch.dtype | None = None, scheduler: DDIMScheduler | None = None, dice_weight: float = 2.0, noise_weight: float = 1.0):
        super().__init__()
        self.network, self.autocast_dtype = network, autocast_dtype
        self.scheduler = scheduler or DDIMScheduler(**get_family("ldseg").scheduler_config)
        self.dice_weight, self.noise_weight = dice_weight, noise_weight

    def draw(self, batch: int, mask_shape, generator: torch.Generator) -> dict[str, torch.Tensor]:
        t = torch.randint(0, self.scheduler.num_train_timesteps, (batch,), generator=generator)
        latent = self.network.latent_shape(*mask_shape[1:])
        return {"t": t, "noise": torch.randn((batch, *latent), generator=generator)}

    def forward(self, image, mask, t, noise) -> dict[str, torch.Tensor]:
        with autocast(image.device, self.autocast_dtype):
            image_code = self.network.encode_image(image)
            z0 = self.network.encode_label(mask)
        z_t = self.scheduler.add_noise(z0.float(), noise, t)
        with autocast(image.device, self.autocast_dtype):
            output = self.network.denoise(z_t, t, image_code)
        output = output.float()
        z_dn = self.scheduler.predict_x0(output, z_t, t)
        with autocast(image.device, self.autocast_dtype):
            logits = self.network.decode(z_dn)
        logits = logits.float()
        bad = non_finite(self.terms, output, logits)
        if bad is not None:
            return bad
        ce = F.cross_entropy(logits, class_index(mask))
        dice = soft_dice_loss(label_probabilities(logits), mask)
        mse = F.mse_loss(self.scheduler.predict_epsilon(output, z_t, t), noise)
        total = ce + self.dice_weight * dice + self.noise_weight * mse
        return {"total": total, "ce": ce, "dice": dice, "mse": mse}
