"""Model families: each ties a network class to its scheduler and its sampler.

A card's ``family`` names one of ``FAMILY_MODULES``; the module ``families/<module>.py``
defines ``FAMILY``. Families are imported on first use, so a card of one family never
pays for (or breaks on) another's code.

The contract every family keeps (the pipeline, the training package and the benchmarks
rely on nothing else):
- ``network(in_channels=1, num_classes=.., channels=(..), **network_defaults)`` builds it
  (``in_channels`` 1 + 2k for a 2.5D card of k context slices; where the image is
  concatenated with a mask, the image comes first, which the 2.5D warm start relies on:
  ``training.checkpoint.widen_image_input``);
  ``network.num_classes`` and ``network.input_multiple`` (the pad multiple) exist;
- ``scheduler(**scheduler_config)`` with the schedulers' interface (``set_timesteps(n)``,
  ``add_noise``, ``initial_sample``, ``step``: ``schedulers/scheduling_utils.py``), or
  ``None`` for a deterministic network (sampling steps and ensemble size are then ignored);
- ``sample(network, scheduler, images [B, C, H, W], ensemble, generator)`` returns
  ``(mean, std, diffused)``: the mean probability and its standard deviation across
  samples as numpy [B, classes, H, W], and how many slices were actually diffused;
- a family whose ``spatial_dims`` holds 3 also builds ``network(..., spatial_dims=3)``
  (a card's ``network`` section says so), and its ``sample`` takes volume patches
  [B, C, D, H, W] and returns [B, classes, D, H, W] (``diffused`` counts patches); the
  pipeline runs it over windows of the card's ``input.patch_size`` on an isotropic grid.
The training side of a family (its loss and noising) is ``training/objectives/<module>.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import VerdiffError

FAMILY_MODULES = {
    "verdiff-net": "verdiff_net",
    "versediff-unet": "versediff_unet",
    "imgx-diffseg": "imgx_diffseg",
    "ldseg": "ldseg",
    "unet": "unet",
}


@dataclass(frozen=True)
class Family:
    name: str
    network: type
    scheduler: type | None
    sample: Callable
    description: str
    network_defaults: dict = field(default_factory=dict)  # constructor keywords written into new cards
    scheduler_config: dict = field(default_factory=dict)
    default_steps: int = 5
    default_ensemble: int = 3
    spatial_dims: tuple[int, ...] = (2,)  # 3 in it: ``network(..., spatial_dims=3)`` builds the volume variant


def get_family(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise VerdiffError(f"unknown model family {name!r}; known: {', '.join(FAMILY_MODULES)}")
    try:
        module = importlib.import_module(f".{FAMILY_MODULES[name]}", __package__)
    except ModuleNotFoundError as error:
        raise VerdiffError(f"model family {name!r} is not available in this installation ({error})") from None
    return module.FAMILY
