"""Verdiff-Net's training step: noise each mask around the conditional U-Net's prior at a
random timestep (``PriorShiftedScheduler.add_noise(..., prior=f)``, eq. 5: the prior shift is
explicit in the noising and in the x0 estimate), predict the noise, and minimise
``verdiff_loss`` (L_simple + BCE on x0 + the prior's BCE + Dice).

``max_timestep`` (``train --max-timestep N``; default None: all T timesteps, as the paper)
draws the timesteps from 0..N only. The bundled cards sample once from t = 150 (issue 15), so
a network trained on all 1000 spends most of its steps on noise levels inference never shows
it; ImgX-DiffSeg (paper 002) trains on the timesteps it samples at. A range rather than the one
timestep keeps multi-step sampling from the card's start (which visits t < 150) in what the
network was trained on. Measured (session 22, docs/experiments.md): the MR model warm-started
on 0..300 followed the all-timesteps curve (training validation 0.8725 against 0.8778), so the
bundled recipes keep all T.

``detach_prior_features`` (``train --detach-prior-features``; default False: the paper's joint
training, eq. 9) stops the diffusion loss at the prior's image features, which the noise
semantic adapter reads, so the prior's encoder learns from the prior's own loss alone. Why
try it: at the cards' sampling the label map is the prior's (``benchmarks/prior_alone.py``,
session 22), and in the joint loss the denoiser's noise regression also pulls on that encoder.
Measured (session 23, docs/experiments.md): the MR model warm-started with it followed the joint
curve within seed noise (training validation 0.8739 at step 1600 against 0.8778 bundled), so the
recipes keep the paper's joint training; the option stays for a GPU A/B.
"""

from __future__ import annotations

import torch
from torch import nn

from VerdiffSegmentLib.losses import verdiff_loss
from VerdiffSegmentLib.networks import Condition
from VerdiffSegmentLib.schedulers import PriorShiftedScheduler

from . import autocast, non_finite


class Objective(nn.Module):
    """The network runs under autocast (bf16 on CUDA when asked); the noising, x0 and the
    loss stay in float32 (BCE is not autocast-safe)."""

    terms = ("total", "simple", "bce", "prior")

    def __init__(self, network: nn.Module, autocast_dtype: torch.dtype | None = None, scheduler: PriorShiftedScheduler | None = None,
                 max_timestep: int | None = None, detach_prior_features: bool = False):
        super().__init__()
        self.network, self.autocast_dtype = network, autocast_dtype
        self.detach_prior_features = detach_prior_features
        self.scheduler = scheduler or PriorShiftedScheduler()
        last = self.scheduler.num_train_timesteps - 1
        if max_timestep is not None and not 0 <= max_timestep <= last:
            raise ValueError(f"max_timestep must be within 0..{last}, not {max_timestep}")
        self.timesteps_drawn = last + 1 if max_timestep is None else max_timestep + 1

    def draw(self, batch: int, mask_shape, generator: torch.Generator) -> dict[str, torch.Tensor]:
        t = torch.randint(0, self.timesteps_drawn, (batch,), generator=generator)
        return {"t": t, "noise": torch.randn((batch, *mask_shape), generator=generator)}

    def forward(self, image, mask, t, noise, pixel_weight=None) -> dict[str, torch.Tensor]:
        """``pixel_weight`` (None: 1 everywhere): weights of the BCE terms, broadcast over the
        channels (``train --sacral-band-weight``)."""
        with autocast(image.device, self.autocast_dtype):
            condition = self.network.condition(image)
        prior = condition.prior.detach().float()  # the shift is a fixed input of the diffusion, trained by its own loss
        x_t = self.scheduler.add_noise(2 * mask - 1, noise, t, prior=prior)
        features = condition.image_features.detach() if self.detach_prior_features else condition.image_features
        with autocast(image.device, self.autocast_dtype):
            eps = self.network(x_t, t, Condition(prior, condition.prior_logits, features))
        eps = eps.float()
        bad = non_finite(self.terms, eps, condition.prior_logits)
        if bad is not None:
            return bad
        return verdiff_loss(eps, noise, self.scheduler.predict_x0(eps, x_t, t, prior=prior), mask, condition.prior_logits.float(), pixel_weight)
