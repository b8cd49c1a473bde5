"""Inference: sagittal slicing in physical space, the families' samplers, and sliding windows over volumes."""

import torch


def memory_layout(spatial_dims: int) -> torch.memory_format:
    """channels-last for slices [B, C, H, W] (2), its volume form for patches [B, C, D, H, W]
    (3): oneDNN's faster layouts, for the weights (``models.load_network``) and the inputs
    (the samplers) alike."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def inference_autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores), a no-op elsewhere; the samplers keep the
    diffusion maths and their outputs in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
