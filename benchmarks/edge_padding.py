"""An MR model with its sagittal slices padded at the edges (the card's ``input.edge_padding_px``
set to each margin), scored per vertebra on the held-out VB3 subjects, printed as JSON
(docs/levels.md, sessions 18 and 19).

Why: on held-out VB3_51 the 2.5D MR model does not draw L1, which touches the top of the field
of view; with the slices padded the network draws it. Each margin runs ``pipeline.segment`` with
a card derived from the model's, ``input.edge_padding_px`` set to it (``pipeline.sample_slices``
pads every slice of the prepared stack by that many grid pixels on all four sides, the border
row repeated, and crops back), and scores it as ``benchmarks/levels_accuracy.py mr`` does
(``levels_accuracy.case_scores``). The card's own margin is one of them when listed.

Session 18 also measured mirrored padding (``reflect``) and padding of the top and bottom only
with this script's version at commit 303d234: both worse (docs/experiments.md).

``--subjects``: other VB3 subjects than the held-out ones (training subjects: a check of harm only).

``--sides superior``: the top rows only (session 19).

Usage: python benchmarks/edge_padding.py [--model verdiff-mr] [--margins 0,8,16,24] [--sides all|superior] [--subjects VB3_01,...] [--threads 2]
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

from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import EDGE_PADDING_SIDES, get_card, load_network  # noqa: E402
from VerdiffSegmentLib.pipeline import segment  # noqa: E402
from levels_accuracy import case_scores, mr_cases, shares, truth_levels_present  # noqa: E402


def with_margin(card, margin: int, sides: str = "all"):
    """The card with its slices padded by ``margin`` grid pixels (``input.edge_padding_px``) on
    ``sides`` (``input.edge_padding_sides``)."""
    return card.derived(input={**card.raw["input"], "edge_padding_px": int(margin), "edge_padding_sides": sides})


def score_variants(cards: dict, network, subjects=None, key: str = "variant") -> tuple[dict, dict]:
    """Run ``pipeline.segment`` with each of ``cards`` (variants of one model, sharing
    ``network``) on the VB3 ``subjects`` (default: the held-out ones) and score each case per
    vertebra (``levels_accuracy.case_scores``); returns (summary, per case), both keyed by
    ``str(variant)``. Each case is printed to stderr as it is scored, under ``key``."""
    rows = {variant: [] for variant in cards}
    for subject, path, truth_image, names, _ in (mr_cases(subjects) if subjects else mr_cases()):
        image = read_image(path)
        truth = sitk.GetArrayFromImage(truth_image)
        names = truth_levels_present(truth, names)
        truth = np.where(np.isin(truth, list(names)), truth, 0)
        for variant, derived in cards.items():
            result = segment(image, derived, device="cpu", network=network)
            predicted = sitk.GetArrayFromImage(result.labels).reshape(truth.shape)
            scores = case_scores(predicted, result.segments, truth, names)
            rows[variant].append({"case": subject, "levels": [s["level"] for s in result.segments],
                                  **{k: scores[k] for k in ("binary_dice", "level_dice_mean", "vertebrae", "correctly_named", "wrongly_named")}})
            print(json.dumps({key: variant, **rows[variant][-1]}), file=sys.stderr, flush=True)
    summary = {
        str(variant): {**shares(scored), "level_dice_per_case": {r["case"]: r["level_dice_mean"] for r in scored}}
        for variant, scored in rows.items()
    }
    return summary, {str(v): r for v, r in rows.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="verdiff-mr")
    parser.add_argument("--margins", default="0,8,16,24")
    parser.add_argument("--sides", default="all", choices=EDGE_PADDING_SIDES, help="pad every side, or the top rows only")
    parser.add_argument("--subjects", default=None, help="comma-separated VB3 subjects (default: the held-out ones)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    network = load_network(card, "cpu")
    cards = {int(m): with_margin(card, int(m), args.sides) for m in args.margins.split(",")}
    summary, per_case = score_variants(cards, network, args.subjects.split(",") if args.subjects else None, "margin")
    result = {"model": card.name, "card_margin": card.edge_padding, "sides": args.sides, "summary": summary, "per_case": per_case}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
