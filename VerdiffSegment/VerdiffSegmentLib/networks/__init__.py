"""PyTorch networks, one file per architecture, configured by constructor keywords."""

from .conditional_unet import ConditionalUNet, MultiScaleFusionModule
from .diffusion_unet import DiffusionUNet, NoiseSemanticAdapter
from .imgx_unet import ImgXUNet
from .ldseg import LDSeg
from .unet import UNetBaseline
from .verdiff_net import Condition, VerdiffNet
from .versediff_unet import VerseDiffUNet

__all__ = ["Condition", "ConditionalUNet", "DiffusionUNet", "ImgXUNet", "LDSeg", "MultiScaleFusionModule", "NoiseSemanticAdapter", "UNetBaseline", "VerdiffNet", "VerseDiffUNet"]
