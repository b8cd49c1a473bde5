"""Verdiff-Net's training loss: L_total = L_simple + L_BCE (paper 001, eqs. 8-10).

Eq. 9 writes the BCE between the noise and its estimate, which are not probabilities.
The coherent reading (MedSegDiff's hybrid loss, which the paper cites) is a BCE on the
*mask*: the x0 recovered from the predicted noise, mapped to [0, 1], against the true
mask. The conditional U-Net f(b) is a discriminative segmenter; it is trained by its own
BCE + soft Dice on its logits, in the same step, so both halves learn end to end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over each sample and channel, averaged."""
    dims = tuple(range(2, probabilities.ndim))
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + eps) / (total + eps)).mean()


def bce_dice_terms(logits: torch.Tensor, mask: torch.Tensor, pixel_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """BCE and soft Dice of mask logits against a {0, 1} mask: the discriminative loss every
    family shares (Verdiff-Net's prior, the U-Net baseline, the x0-predicting families).
    ``pixel_weight`` (broadcast to the mask; None: 1) weights the BCE only."""
    return {"bce": F.binary_cross_entropy_with_logits(logits, mask, weight=pixel_weight), "dice": soft_dice_loss(logits.sigmoid(), mask)}


def verdiff_loss(eps_pred, eps, x0_pred, mask, prior_logits, pixel_weight=None) -> dict[str, torch.Tensor]:
    """Terms of the loss; ``mask`` is the binary target in {0, 1}, ``x0_pred`` in [-1, 1];
    ``pixel_weight`` (broadcast to the mask; None, the paper's: 1) weights both BCE terms.

    Returns a dict with ``simple`` (eq. 8), ``bce`` (eq. 9 on x0), ``prior`` (BCE + Dice of
    f(b)) and their sum ``total``.
    """
    simple = F.mse_loss(eps_pred, eps)
    probability = ((x0_pred + 1) / 2).clamp(1e-4, 1 - 1e-4)
    bce = F.binary_cross_entropy(probability, mask, weight=pixel_weight)
    prior_terms = bce_dice_terms(prior_logits, mask, pixel_weight)
    prior = prior_terms["bce"] + prior_terms["dice"]
    return {"simple": simple, "bce": bce, "prior": prior, "total": simple + bce + prior}
