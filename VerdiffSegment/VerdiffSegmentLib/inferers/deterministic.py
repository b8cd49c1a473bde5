"""Prediction for deterministic networks (the U-Net baseline), in the samplers' shape."""

from __future__ import annotations

import numpy as np
import torch

from . import memory_layout


@torch.inference_mode()
def predict_deterministic(model, scheduler, images: torch.Tensor, ensemble: int, generator: torch.Generator):
    """One forward pass: (sigmoid probability, zero spread, 0 slices diffused). ``scheduler``,
    ``ensemble`` and ``generator`` are accepted for the common signature and unused."""
    probability = model(images.contiguous(memory_format=memory_layout(images.dim() - 2))).float().sigmoid().cpu().numpy()
    return probability, np.zeros_like(probability), 0
