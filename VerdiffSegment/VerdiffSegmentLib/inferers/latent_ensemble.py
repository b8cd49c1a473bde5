"""The ensemble sampler of the latent-diffusion family (LDSeg, paper 003, Algorithm 2).

Each slice's image embedding z_i is computed once; the ensemble members are stacked along
the batch axis (one denoiser call serves all), each starting from its own noise
z_T ~ N(0, I) in the latent, and run through ``scheduler.timesteps`` (2 DDIM steps by
default). The final latents are decoded in one batch and the decoder's softmax gives the
label probabilities. Every slice is diffused (the latent is small, so there is nothing to
save by skipping slices). Returns what every family's sampler returns: the mean
probability and its standard deviation across members ([B, classes, H, W] numpy) and the
number of slices diffused. Volumes [B, C, D, H, W] (the 3D variant) work the same way.
"""

from __future__ import annotations

import torch

from ..networks.ldseg import label_probabilities
from ..schedulers import randn_tensor
from . import memory_layout


@torch.inference_mode()
def sample_latent_ensemble(model, scheduler, images: torch.Tensor, ensemble: int, generator: torch.Generator):
    image_code = model.encode_image(images.contiguous(memory_format=memory_layout(images.dim() - 2))).float()
    members = image_code.repeat(ensemble, *([1] * (image_code.ndim - 1)))
    z = scheduler.initial_sample(randn_tensor(members.shape, generator, members.device))
    for t in scheduler.timesteps:
        t_batch = torch.full((members.shape[0],), int(t), device=members.device, dtype=torch.long)
        z = scheduler.step(model.denoise(z, t_batch, members).float(), int(t), z, generator).prev_sample
    probability = label_probabilities(model.decode(z).float()).cpu().numpy()
    samples = probability.reshape(ensemble, images.shape[0], *probability.shape[1:])
    return samples.mean(axis=0), samples.std(axis=0), int(images.shape[0])
