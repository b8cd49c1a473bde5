"""ImgX-DiffSeg's training step (paper 002, Sec. 3): x0 prediction, Dice + cross-entropy,
recycling, and the 5 resampled timesteps of sampling used in training too.

One step, per sample:
1. draw t uniformly among the ``train_steps`` kept timesteps of the resampled schedule
   (``DDPMScheduler.set_timesteps``: 999, 749, 500, 250, 0 for 5), the ones the sampler runs;
2. recycling (eqs. 8-9): noise the true mask at the next *noisier* kept timestep t+ with
   eps+, let the network predict x0 there without gradient (stop-gradient), and noise that
   prediction (2 sigmoid(logits) - 1, as the sampler does) at t with an independent eps:
   x_t = sqrt(a_t) x0_theta(x_{t+}, t+) + sqrt(1 - a_t) eps;
   without recycling x_t is the true mask noised at t;
3. the network predicts x0 logits from (x_t, t, image); the loss is BCE + soft Dice on them
   (the paper's cross-entropy + foreground Dice; a sigmoid channel is the foreground).

Decisions where the paper is vague:
- "t+1" is the next noisier timestep of the *resampled* schedule (training runs the same
  5 steps as sampling), not t+1 of the 1000-step chain.
- The noisiest kept timestep (T-1) has no noisier step to recycle from; it is still
  trained (the sampler's first call is there), from the true mask noised at T-1, where
  sqrt(a_T) < 0.007 leaves nothing of the mask to leak. (The authors' code instead never
  trains at T-1 with gradient; with only a few thousand CPU steps we keep the sampler's
  first step trained.)
- The paper recycles every sample; ``recycle_probability`` (default 1.0) allows mixing in
  ground-truth noising, and the coin is drawn in every case so the random stream does not
  depend on it.
All randomness (timesteps, both noises, the coins) comes from ``draw`` with the loop's
generator, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from VerdiffSegmentLib.schedulers import DDPMScheduler

from . import autocast, mask_logit_loss


class Objective(nn.Module):
    """Args:
        network: an ``ImgXUNet`` (``network(x_t, t, image)`` -> x0 logits).
        autocast_dtype: autocast dtype of the network's forwards (default None: float32);
            the noising and the loss stay in float32.
        scheduler: the diffusion (default ``DDPMScheduler()``, T = 1000, linear betas).
        train_steps: kept timesteps of the resampled schedule trained on (default 5).
        recycle_probability: chance a sample's x_t is made from the recycled prediction
            rather than the true mask (default 1.0, the paper's).
    """

    terms = ("total", "bce", "dice")

    def __init__(
        self,
        network: nn.Module,
        autocast_dtype: torch.dtype | None = None,
        scheduler: DDPMScheduler | None = None,
        train_steps: int = 5,
        recycle_probability: float = 1.0,
    ):
        super().__init__()
        self.network, self.autocast_dtype = network, autocast_dtype
        self.scheduler = scheduler or DDPMScheduler()
        self.scheduler.set_timesteps(train_steps)
        self.timesteps = self.scheduler.timesteps.clone()  # descending, noisiest first
        # the next noisier kept timestep of each kept one, -1 for the noisiest
        self.noisier = torch.cat([torch.tensor([-1]), self.timesteps[:-1]])
        self.recycle_probability = recycle_probability

    def draw(self, batch: int, mask_shape, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, len(self.timesteps), (batch,), generator=generator)
        noise_recycle = torch.randn((batch, *mask_shape), generator=generator)
        noise = torch.randn((batch, *mask_shape), generator=generator)
        coin = torch.rand((batch,), generator=generator) < self.recycle_probability
        t_recycle = self.noisier[index]
        return {
            "t": self.timesteps[index],
            "t_recycle": t_recycle,
            "recycle": coin & (t_recycle >= 0),
            "noise_recycle": noise_recycle,
            "noise": noise,
        }

    def noisy_mask(self, image, mask, t, t_recycle, recycle, noise_recycle, noise) -> torch.Tensor:
        """x_t of each sample: the true mask, or the network's stop-gradient prediction at
        t_recycle where ``recycle``, noised at t with ``noise``."""
        source = 2 * mask - 1
        rows = recycle.nonzero().squeeze(1)
        if len(rows):
            with torch.no_grad():
                x_noisier = self.scheduler.add_noise(source[rows], noise_recycle[rows], t_recycle[rows])
                with autocast(image.device, self.autocast_dtype):
                    logits = self.network(x_noisier, t_recycle[rows], image[rows])
                source = source.clone()
                source[rows] = 2 * logits.float().sigmoid() - 1
        return self.scheduler.add_noise(source, noise, t)

    def forward(self, image, mask, t, t_recycle, recycle, noise_recycle, noise) -> dict[str, torch.Tensor]:
        x_t = self.noisy_mask(image, mask, t, t_recycle, recycle, noise_recycle, noise)
        with autocast(image.device, self.autocast_dtype):
            logits = self.network(x_t, t, image)
        return mask_logit_loss(self.terms, logits, mask)
