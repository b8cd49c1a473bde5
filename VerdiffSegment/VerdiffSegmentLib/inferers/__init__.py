"""Inference: sagittal slicing in physical space, the families' samplers, and sliding windows over volumes."""

import torch


def memory_layout(images: torch.Tensor) -> torch.memory_format:
    """channels-last for slices [B, C, H, W], its volume form for patches [B, C, D, H, W]
    (oneDNN's faster layouts; ``models.load_network`` puts the weights in the same one)."""
    return torch.channels_last if images.dim() == 4 else torch.channels_last_3d
