"""How far to trust one result: a per-run reliability estimate and its warning (issue 16).

The estimate is computed from what the run itself produced, on the sagittal grid, at no
extra network cost:

- ``self_dice``: the soft Dice between the ensemble's mean foreground probability ``p`` and
  its own label map ``y = p > 0.5``: ``2 sum(p y) / (sum(p) + sum(y))``. It is the Dice the
  model expects of itself if its probabilities were calibrated (a voxel labelled at
  p = 0.6 is wrong 40 % of the time), so it falls where much of the result is decided
  near 0.5: the ambiguous boundaries and false structures of an image unlike the
  training data. 0 when nothing is labelled.
- ``ambiguous_fraction``: voxels with 0.2 < p < 0.8, per labelled voxel.
- ``mean_uncertainty``: the mean ensemble spread inside the label map.
- ``foreground_fraction``: the labelled share of the grid (0: no vertebra found).

Decision (measured; the figures and the command are in ``docs/experiments.md``): a result is
flagged as likely wrong when nothing is labelled or ``self_dice`` is below a threshold: the
card's ``reliability.self_dice_warning`` where its model was calibrated (each model is as
sharp as its training made it), else ``SELF_DICE_WARNING`` (0.80). One threshold on one score per
model, so that it cannot be tuned to the few validation cases there are.

A second, plausibility check where a card asks for it (``reliability.min_vertebrae_share``,
``vertebra_count_check``): fewer separate vertebrae than that share of the levels the model
was trained to segment. Decided for the X-ray model, whose errors are mostly confident
(merged or missed bodies that ``self_dice`` cannot see): its training radiographs all show
T1-L5, so finding fewer than three quarters of the 17 means bodies were merged or missed,
or the picture shows a part of the spine, which the model never saw in training either.
"""

from __future__ import annotations

import numpy as np

SELF_DICE_WARNING = 0.80  # for cards not calibrated: fires only on the clearly unsure (see docs/experiments.md)
AMBIGUOUS = (0.2, 0.8)


def reliability_estimate(probability: np.ndarray, spread: np.ndarray, labels: np.ndarray, threshold: float = SELF_DICE_WARNING) -> dict:
    """The estimate (module docstring) from the mean probability and spread
    [slices, classes, rows, cols] and the label map [slices, rows, cols] of one run, with
    ``warnings``: human-readable reasons to distrust it (empty when there are none)."""
    p = probability.max(axis=1).astype(np.float64)
    y = labels > 0
    labelled = int(y.sum())
    if labelled == 0:
        return {
            "self_dice": 0.0,
            "ambiguous_fraction": None,
            "mean_uncertainty": None,
            "foreground_fraction": 0.0,
            "likely_wrong": True,
            "warnings": ["no vertebra was found: the image may not show the spine, or not in a way this model knows"],
        }
    self_dice = float(2 * p[y].sum() / (p.sum() + labelled))
    ambiguous = float(((p > AMBIGUOUS[0]) & (p < AMBIGUOUS[1])).sum() / labelled)
    mean_uncertainty = float(spread.max(axis=1)[y].mean())
    warnings = []
    if self_dice < threshold:
        warnings.append(
            f"the result is likely wrong: the model is unsure of much of it (self-consistency {self_dice:.3f} < {threshold:.3f}); "
            "the image may be of a contrast, body region or modality this model was not trained on"
        )
    return {
        "self_dice": round(self_dice, 4),
        "ambiguous_fraction": round(ambiguous, 4),
        "mean_uncertainty": round(mean_uncertainty, 5),
        "foreground_fraction": round(labelled / y.size, 6),
        "likely_wrong": bool(warnings),
        "warnings": warnings,
    }


def vertebra_count_check(estimate: dict, found: int, expected: int, share: float | None) -> dict:
    """Add the plausibility check of the module docstring to ``estimate`` (in place, and
    returned): ``vertebrae_found`` / ``vertebrae_expected``, and a warning when fewer than
    ``share`` x ``expected`` vertebrae were separated. No check without ``share`` or levels,
    or when nothing was labelled (that already warns)."""
    if share is None or not expected or not estimate.get("foreground_fraction"):
        return estimate
    estimate["vertebrae_found"], estimate["vertebrae_expected"] = int(found), int(expected)
    if found < share * expected:
        estimate["warnings"].append(
            f"the result is likely wrong: only {found} separate vertebrae were found where the model's training images showed {expected}; "
            "bodies may be merged or missed, or the image shows a part of the spine unlike the training images"
        )
        estimate["likely_wrong"] = True
    return estimate
