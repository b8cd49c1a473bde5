"""The ensemble sampler of the x0-predicting families (ImgX-DiffSeg, VerseDiff-UNet).

The network is called as ``model(x_t, t, images)`` and returns mask *logits* of x0; the
sampler maps them to the mask space (x0 = 2 sigmoid(logits) - 1) and takes a
``DDPMScheduler`` step. Sampling starts from pure noise (these families have no prior),
every slice is diffused, and ensemble members are stacked along the batch axis so one
network call serves all. Returns what every family's sampler returns: the mean
probability and its standard deviation across members ([B, classes, H, W] numpy) and the
number of slices diffused. Volume patches [B, C, D, H, W] (the 3D variant) work the same
way ([B, classes, D, H, W] out; the count is then of patches).
"""

from __future__ import annotations

import torch

from ..schedulers import randn_tensor
from . import memory_layout


@torch.inference_mode()
def sample_x0_ensemble(model, scheduler, images: torch.Tensor, ensemble: int, generator: torch.Generator):
    members = images.repeat(ensemble, *[1] * (images.dim() - 1)).contiguous(memory_format=memory_layout(images.dim() - 2))
    shape = (members.shape[0], model.num_classes, *members.shape[2:])
    x = scheduler.initial_sample(randn_tensor(shape, generator, members.device))
    x0 = x
    for t in scheduler.timesteps:
        t_batch = torch.full((shape[0],), int(t), device=members.device, dtype=torch.long)
        logits = model(x, t_batch, members).float()
        step = scheduler.step(2 * logits.sigmoid() - 1, int(t), x, generator)
        x, x0 = step.prev_sample, step.pred_original_sample
    samples = ((x0 + 1) / 2).cpu().numpy().reshape(ensemble, images.shape[0], *shape[1:])
    return samples.mean(axis=0), samples.std(axis=0), int(images.shape[0])
