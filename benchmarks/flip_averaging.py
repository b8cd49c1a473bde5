"""Flip averaging at test time, measured on held-out cases and printed as JSON (docs/experiments.md).

Compares, per case, the card's plain ensemble of 2 with an ensemble of 2 whose second member
samples the mirrored image (columns reversed: left-right on an AP X-ray, front-back on a
sagittal MR slice) and is flipped back before averaging: the same diffusion passes, one more
prior pass. Both go through the card's post-processing and uncertainty smoothing, as
``pipeline.segment`` does; Dice, uncertainty AUROC and ECE as ``training evaluate`` computes
them. ``mirror_only`` scores the mirrored member alone (how well the model knows mirrored images).

``--card PATH`` measures another card on the same held-out cases (e.g. a 2.5D fine-tune,
``input.context_slices``). A 2.5D member reads each slice with its neighbours; the mirrored
member mirrors the columns of the whole sagittal stack before the channels are built
(``pipeline.sample_slices``), so every channel is mirrored alike and the channels keep their
order (the neighbours lie along the slice axis, which the mirror does not touch).

Usage: python benchmarks/flip_averaging.py {mr,xray} [--card PATH] [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from VerdiffSegmentLib.metrics import auroc, dice, expected_calibration_error, grown_bounding_box  # noqa: E402
from VerdiffSegmentLib.models import load_network, make_scheduler, models_dir, read_card  # noqa: E402
from VerdiffSegmentLib.pipeline import check_card_fits, labels_and_uncertainty, sample_slices  # noqa: E402
from VerdiffSegmentLib.preparation import prepare_for_card  # noqa: E402

MODELS = {"mr": "verdiff-mr", "xray": "verdiff-xray"}


def held_out_cases(card, data: Path):
    """(name, image, truth mask on the image grid) of the card's held-out cases: the same cases,
    read the same way, as ``python -m training evaluate`` takes them."""
    from training.datasets import evaluation_cases
    from training.evaluate import run_config_of_card

    for name, image, truth, _, _ in evaluation_cases(run_config_of_card(card), data, card.split, "validation"):
        yield name, image, truth > 0


def sample(card, network, prepared, ensemble: int, seed: int, mirrored: bool = False):
    """The ensemble's mean probability and spread on ``prepared``'s grid, as ``segment`` samples
    them; ``mirrored``: of the mirrored stack (columns reversed), flipped back."""
    scheduler = make_scheduler(card)
    scheduler.set_timesteps(card.default_steps)
    stack = np.ascontiguousarray(prepared.stack[..., ::-1]) if mirrored else prepared.stack
    generator = torch.Generator().manual_seed(seed)
    probability, spread, _ = sample_slices(stack, card, network, scheduler, ensemble, generator, torch.device("cpu"), 8, None, None, offsets=prepared.input_offsets)
    if mirrored:
        probability, spread = (np.ascontiguousarray(part[..., ::-1]) for part in (probability, spread))
    return probability, spread


def score(card, prepared, truth, probability, spread) -> dict:
    """Dice, AUROC and ECE of one result after the card's post-processing (``pipeline.labels_and_uncertainty``, as ``segment``)."""
    result = labels_and_uncertainty(probability, spread, prepared, card, keep_probability=True)
    foreground, labels, uncertainty = (sitk.GetArrayFromImage(image).reshape(truth.shape) for image in (result.foreground, result.labels, result.uncertainty))
    labels = labels > 0
    box = grown_bounding_box(truth | labels, 10)
    area = auroc(uncertainty[box], (labels != truth)[box])
    return {"dice": round(dice(labels, truth), 4), "auroc": None if area is None else round(area, 4), "ece": round(expected_calibration_error(foreground[box], truth[box]), 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(MODELS))
    parser.add_argument("--card", type=Path, default=None, help="a card file to measure instead of the bundled model of KIND")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = read_card(args.card or models_dir() / f"{MODELS[args.kind]}.json")
    network = load_network(card, "cpu")
    rows = []
    for index, (name, image, truth) in enumerate(held_out_cases(card, args.data)):
        if args.limit is not None and index >= args.limit:
            break
        check_card_fits(image, card)  # a 2.5D card refuses X-rays, as ``segment`` does
        prepared = prepare_for_card(image, card)
        clock = time.perf_counter()
        plain = score(card, prepared, truth, *sample(card, network, prepared, 2, 0))
        plain_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        first, _ = sample(card, network, prepared, 1, 0)
        mirrored, _ = sample(card, network, prepared, 1, 1, mirrored=True)
        flip_seconds = time.perf_counter() - clock
        spread = np.abs(first - mirrored) / 2  # the population std of two samples, as the ensemble's
        row = {"case": name, "plain": plain, "flip": score(card, prepared, truth, (first + mirrored) / 2, spread),
               "mirror_only": score(card, prepared, truth, mirrored, spread), "seconds": {"plain": round(plain_seconds, 2), "flip": round(flip_seconds, 2)}}
        rows.append(row)
    summary = {
        key: {metric: round(float(np.nanmean([np.nan if r[key][metric] is None else r[key][metric] for r in rows])), 4) for metric in ("dice", "auroc", "ece")}
        for key in ("plain", "flip", "mirror_only")
    }
    result = {"model": card.name, "cases": len(rows), "summary": summary, "per_case": rows}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
