"""The MR model with its sagittal slices padded at the edges before sampling, printed as JSON
(docs/levels.md, session 18; measured, not kept).

Why: on held-out VB3_51 the 2.5D MR model does not draw L1, which touches the top of the field
of view; with the slices padded the network draws it. Each setting pads every slice of the
prepared stack by ``margin`` grid pixels (``numpy.pad`` mode ``edge``: the border row repeated;
``reflect``: mirrored) on the superior-inferior sides (``rows``) or on all four (``both``),
samples as ``pipeline.segment`` does (same seed) and crops back; the probability then goes through
the card's post-processing, the per-vertebra naming and
``levels_accuracy.case_scores``, as ``benchmarks/levels_accuracy.py mr`` scores the model. Margin 0 is the pipeline as it is.

Usage: python benchmarks/edge_padding.py [--mode edge] [--sides both] [--margins 0,8,16,24] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO), str(REPO / "benchmarks")]

from VerdiffSegmentLib import levels  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_network, make_scheduler  # noqa: E402
from VerdiffSegmentLib.pipeline import labels_and_uncertainty, sample_slices  # noqa: E402
from VerdiffSegmentLib.preparation import prepare_for_card  # noqa: E402
from levels_accuracy import case_scores, mr_cases, shares, truth_levels_present  # noqa: E402


def padded_probability(card, network, prepared, margin: int, mode: str, sides: str, seed: int = 0):
    """The ensemble's mean probability and spread with the slices padded by ``margin`` pixels, cropped back."""
    rows, cols = margin, (margin if sides == "both" else 0)
    stack = np.ascontiguousarray(np.pad(prepared.stack, ((0, 0), (rows, rows), (cols, cols)), mode=mode))
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(card.default_steps)
    probability, spread, _ = sample_slices(stack, card, network, scheduler, card.default_ensemble, torch.Generator().manual_seed(seed),
                                           torch.device("cpu"), 8, None, None, offsets=prepared.input_offsets)
    crop = (slice(None), slice(None), slice(rows, rows + prepared.stack.shape[1]), slice(cols, cols + prepared.stack.shape[2]))
    return probability[crop], spread[crop]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="verdiff-mr")
    parser.add_argument("--mode", default="edge", choices=["edge", "reflect", "constant"])
    parser.add_argument("--sides", default="both", choices=["both", "rows"])
    parser.add_argument("--margins", default="0,8,16,24")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    network = load_network(card, "cpu")
    margins = [int(m) for m in args.margins.split(",")]
    rows = {m: [] for m in margins}
    for subject, path, truth_image, names, _ in mr_cases():
        image = read_image(path)
        truth = sitk.GetArrayFromImage(truth_image)
        names = truth_levels_present(truth, names)
        truth = np.where(np.isin(truth, list(names)), truth, 0)
        prepared = prepare_for_card(image, card)
        for margin in margins:
            result = labels_and_uncertainty(*padded_probability(card, network, prepared, margin, args.mode, args.sides), prepared, card)
            named, segments, _ = levels.name_vertebrae(result.labels, card, gaps=result.gaps)
            predicted = sitk.GetArrayFromImage(prepared.restore(named)).reshape(truth.shape)
            scores = case_scores(predicted, segments, truth, names)
            rows[margin].append({"case": subject, "levels": [s["level"] for s in segments],
                                 **{k: scores[k] for k in ("binary_dice", "level_dice_mean", "vertebrae", "correctly_named", "wrongly_named")}})
            print(json.dumps({"margin": margin, **rows[margin][-1]}), file=sys.stderr, flush=True)
    summary = {
        str(margin): {**shares(scored), "level_dice_per_case": {r["case"]: r["level_dice_mean"] for r in scored}}
        for margin, scored in rows.items()
    }
    result = {"model": card.name, "mode": args.mode, "sides": args.sides, "summary": summary, "per_case": {str(m): r for m, r in rows.items()}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
