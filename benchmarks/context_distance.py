"""A 2.5D MR model with its input channels at other distances (the card's
``input.context_distance_mm`` set to each), scored per vertebra on VB3 subjects, printed as
JSON (docs/levels.md, session 21).

Why: the VB3 volumes are 1 mm sagittal slices interpolated from about 4 mm acquired ones (the
second difference along the slice axis peaks every fourth slice), so the bundled model's
neighbours 1.25 mm away are mostly the same acquired slices as its centre; clinical sagittal
MR has 3-5 mm slices. Each distance runs ``pipeline.segment`` with a card derived from the
model's and is scored as ``edge_padding.py`` scores its margins (``score_variants``). The
card's own distance (absent: its spacing) is one of them when listed.

``--subjects``: other VB3 subjects than the held-out ones (training subjects: a check of harm only).

Usage: python benchmarks/context_distance.py [--model verdiff-mr] [--distances 1.25,2.5,4] [--subjects VB3_01,...] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO), str(REPO / "benchmarks")]

from VerdiffSegmentLib.models import get_card, load_network  # noqa: E402
from edge_padding import score_variants  # noqa: E402


def with_distance(card, distance_mm: float):
    """The card with its input channels ``distance_mm`` apart (``input.context_distance_mm``)."""
    return card.derived(input={**card.raw["input"], "context_distance_mm": float(distance_mm)})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="verdiff-mr")
    parser.add_argument("--distances", default="1.25,2.5,4", help="mm between neighbouring input channels, comma-separated")
    parser.add_argument("--subjects", default=None, help="comma-separated VB3 subjects (default: the held-out ones)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    if not card.context_slices:
        parser.error(f"{card.name} is not a 2.5D model: it has no neighbouring input channels")
    network = load_network(card, "cpu")
    cards = {float(d): with_distance(card, float(d)) for d in args.distances.split(",")}
    summary, per_case = score_variants(cards, network, args.subjects.split(",") if args.subjects else None, "distance_mm")
    result = {"model": card.name, "card_distance_mm": card.context_distance_mm or card.spacing_mm, "summary": summary, "per_case": per_case}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
