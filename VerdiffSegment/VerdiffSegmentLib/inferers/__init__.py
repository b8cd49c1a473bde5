"""Inference: sagittal slicing in physical space, and the diffusion ensemble sampler."""
