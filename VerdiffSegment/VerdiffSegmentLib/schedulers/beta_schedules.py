"""Noise schedules: beta_t for t = 1..T, returned as float64 tensors (index 0 is t = 1)."""

from __future__ import annotations

import math

import torch


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al.), the one Verdiff-Net and ImgX-DiffSeg use."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def cosine_betas(num_train_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)."""
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_betas(name: str, num_train_timesteps: int) -> torch.Tensor:
    try:
        return BETA_SCHEDULES[name](num_train_timesteps)
    except KeyError:
        raise ValueError(f"unknown beta schedule {name!r}; choose from {sorted(BETA_SCHEDULES)}") from None
