"""Per-vertebra naming accuracy on held-out data, printed as JSON (docs/levels.md).

Two figures per modality, to tell naming errors from segmentation errors:

- ``truth``: the naming step alone: the union of the truth levels goes through
  ``levels.vertebrae`` and is compared with the truth levels;
- ``model``: the bundled model's output (``pipeline.segment`` with its per-vertebra step)
  compared with the truth levels.

Metrics (``levels.level_scores``): per-level Dice (0 for a level no segment is named
with), the share of truth vertebrae named with the right level, the share separated
one-to-one, and the Dice with names aside (each truth vertebra against the piece that overlaps
it most: session 23, X-ray 0.762 names aside against 0.575 named); X-ray also the Cobb angles'
SMAPE (``cobb``).

The model's figures are one draw of its sampling (``--seed``, default 0). On the 47 held-out
radiographs, seeds 0 / 1 / 2 of the bundled X-ray model gave level Dice 0.650 / 0.654 / 0.650 and
named wrong 7.0 / 8.6 / 7.8 %, binary Dice 0.8229 / 0.8228 / 0.8228 (session 35): a change in the
names smaller than that needs several seeds to be seen.

Usage: python benchmarks/levels_accuracy.py {mr,xray,ct} [--truth-only] [--limit N] [--include-trained] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from VerdiffSegmentLib import cobb, levels  # noqa: E402
from VerdiffSegmentLib.level_map import predict_level_map  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_level_map, load_level_network  # noqa: E402
from VerdiffSegmentLib.vertebra_level import PieceLevelReader  # noqa: E402
from VerdiffSegmentLib.pipeline import segment  # noqa: E402
from VerdiffSegmentLib.ribs import RibCounter  # noqa: E402
from training.splits import MR_VALIDATION  # noqa: E402

def mr_cases(subjects=MR_VALIDATION):
    for subject in subjects:
        truth = sitk.ReadImage(str(DATA / "mr-lumbar-vb3" / f"{subject}_seg.nii.gz"))
        yield subject, DATA / "mr-lumbar-vb3" / f"{subject}_img.nii.gz", truth, {i: f"L{i}" for i in range(1, 6)}, None


def xray_left_out(card) -> dict[str, str]:
    """The card's held-out radiographs whose landmarks describe no 17 vertebrae, with why
    (``training.datasets.landmark_problem``: 61 A has L4 annotated twice and no L5)."""
    from training.datasets import landmark_problem

    problems = {name: landmark_problem(DATA / "xray-aasce" / "labels" / "training" / f"{name}.jpg.mat") for name in card.validation_cases}
    return {name: why for name, why in problems.items() if why}


def xray_cases(card, left_out: dict[str, str]):
    """The card's held-out radiographs but those ``left_out`` (``xray_left_out``)."""
    from training.datasets import aasce_mask

    root = DATA / "xray-aasce"
    names = [line.strip() for line in (root / "labels" / "training" / "filenames.csv").read_text().splitlines() if line.strip()]
    angles = np.loadtxt(root / "labels" / "training" / "angles.csv", delimiter=",")
    by_name = {name.removesuffix(".jpg"): row for name, row in zip(names, angles)}
    level_names = levels.card_levels(card)
    for name in card.validation_cases:
        path = root / "data" / "training" / f"{name}.jpg"
        if name in left_out:
            continue
        truth = aasce_mask(sitk.ReadImage(str(path)), root / "labels" / "training" / f"{name}.jpg.mat")
        yield name, path, truth, {i + 1: level for i, level in enumerate(level_names)}, by_name[name]


def ct_cases(card, include_trained: bool = False):
    from training.labels import SOURCES

    vertebrae = {k: v for k, v in SOURCES["totalsegmentator"].items() if v not in ("sacrum",)}
    truth = sitk.ReadImage(str(DATA / "ct-abdomen-small" / "example_ct_vertebrae.nii.gz"))
    trained_on = "example_ct" in (card.split or {}).get("train", [])  # the CT model trained on both CTs (training/verdiff-ct-all.toml)
    yield f"ct-abdomen example_ct ({'trained on' if trained_on else 'held out'})", DATA / "ct-abdomen-small" / "example_ct.nii.gz", truth, vertebrae, None
    if include_trained:  # the chest CT (C5-L3) was trained on: its figures are not validation
        chest = {k: v for k, v in vertebrae.items() if 29 <= k <= 46}
        truth = sitk.ReadImage(str(DATA / "ct-chest" / "mask.nii.gz"))
        yield "ct-chest (trained on)", DATA / "ct-chest" / "cxr_ct_int16.nii.gz", truth, chest, None


def truth_levels_present(truth: np.ndarray, names: dict[int, str]) -> dict[int, str]:
    present = set(np.unique(truth).tolist())
    return {value: level for value, level in names.items() if value in present}


POSTERIOR_BINS = (0.9, 0.95, 0.99, 0.999, 1.0)  # the level network's chain posteriors, binned (``posterior_bins``)


def named_posteriors(predicted: np.ndarray, segments: list[dict], truth: np.ndarray, names: dict[int, str]) -> list[list]:
    """[posterior, right] of each segment the level network named (``level_posterior``): right when
    the truth vertebra under most of the segment carries its level (background counts as wrong)."""
    out = []
    for entry in segments:
        if entry.get("level_posterior") is None:
            continue
        under = truth[predicted == entry["value"]]
        counts = np.bincount(under.astype(np.int64), minlength=max(names, default=0) + 1)
        out.append([entry["level_posterior"], names.get(int(counts.argmax())) == entry["level"]])
    return out


def posterior_bins(pairs: list[list]) -> list[dict]:
    """The named-right share per bin of ``POSTERIOR_BINS`` (session 40: a ranking, not calibrated)."""
    rows = []
    edges = list(POSTERIOR_BINS) + [np.inf]
    for low, high in zip(edges[:-1], edges[1:]):
        inside = np.array([pair for pair in pairs if low <= pair[0] < high], float).reshape(-1, 2)  # [posterior, right]
        if len(inside):
            rows.append({"from": low, "names": len(inside), "right_share": round(float(inside[:, 1].mean()), 4),
                         "mean_posterior": round(float(inside[:, 0].mean()), 4)})
    return rows


def case_scores(predicted: np.ndarray, segments: list[dict], truth: np.ndarray, names: dict[int, str]) -> dict:
    """One result against the truth levels: ``levels.level_scores``, the segments found, the
    binary Dice of the union (the scores every levels benchmark reports per case) and the level
    network's names with their posteriors (``named_posteriors``)."""
    scores = levels.level_scores(predicted, {s["value"]: s["level"] for s in segments}, truth, names)
    scores["found"] = len(segments)
    scores["binary_dice"] = round(float(2 * ((predicted > 0) & (truth > 0)).sum() / max((predicted > 0).sum() + (truth > 0).sum(), 1)), 4)
    scores["named_posteriors"] = named_posteriors(predicted, segments, truth, names)
    return scores


def shares(scored: list[dict]) -> dict:
    """Over cases scored by ``case_scores``: the mean binary and level Dice, the shares of all
    their vertebrae named right and named wrong, and the level network's names right per
    posterior bin (``posterior_bins``)."""
    vertebrae = sum(s["vertebrae"] for s in scored)
    return {
        "level_dice_mean": round(float(np.mean([s["level_dice_mean"] for s in scored])), 4),
        "correctly_named_share": round(sum(s["correctly_named"] for s in scored) / vertebrae, 4),
        "wrongly_named_share": round(sum(s["wrongly_named"] for s in scored) / vertebrae, 4),
        "binary_dice_mean": round(float(np.mean([s["binary_dice"] for s in scored])), 4),
        "level_dice_names_aside": round(float(np.mean([s["level_dice_names_aside"] for s in scored])), 4),
        "level_posterior_bins": posterior_bins([pair for s in scored for pair in s.get("named_posteriors", [])]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modality", choices=["mr", "xray", "ct"])
    parser.add_argument("--truth-only", action="store_true", help="only the naming step on the truth masks")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--include-trained", action="store_true", help="ct: also the chest CT the model was trained on")
    parser.add_argument("--seed", type=int, default=0,
                        help="the sampling seed of the model's run (default 0, the cards' figures); the naming figures move with it (session 35)")
    parser.add_argument("--model", default=None, help="a bundled model of that modality (default: verdiff-mr, verdiff-xray, verdiff-ct)")
    args = parser.parse_args(argv)
    card = get_card(args.model or {"mr": "verdiff-mr", "xray": "verdiff-xray", "ct": "verdiff-ct"}[args.modality])
    left_out = xray_left_out(card) if args.modality == "xray" else {}
    cases = {"mr": mr_cases, "xray": lambda: xray_cases(card, left_out), "ct": lambda: ct_cases(card, args.include_trained)}[args.modality]()
    structure = levels.structure_of(card.labels[0])
    card_levels = levels.card_levels(card)
    level_map_network, level_network = load_level_map(card), load_level_network(card)  # None for a card without them
    rows = []
    for index, (name, image_path, truth_image, names, angles) in enumerate(cases):
        if args.limit is not None and index >= args.limit:
            break
        truth = sitk.GetArrayFromImage(truth_image)
        names = truth_levels_present(truth, names)
        truth = np.where(np.isin(truth, list(names)), truth, 0)
        union = sitk.GetImageFromArray((truth > 0).astype(np.uint8))
        union.CopyInformation(truth_image)
        row = {"case": name}
        image = read_image(image_path)
        coordinates = reader = None  # a card's level helpers name the truth as they name the model's output
        if level_map_network is not None:
            coordinates = predict_level_map(level_map_network, sitk.GetArrayFromImage(image))
        if level_network is not None:
            reader = PieceLevelReader(level_network, sitk.GetArrayFromImage(image))
        rib_counter = RibCounter(image) if card.rib_anchor else None
        named = levels.vertebrae(union, structure, levels=card_levels, extra_vertebrae=card.extra_vertebrae, coordinates=coordinates, level_reader=reader,
                                 rib_counter=rib_counter, lowest_level_in_view=card.lowest_level_in_view)
        outputs = {"truth": (*named, None)}
        if not args.truth_only:
            clock = time.perf_counter()
            result = segment(image, card, device="cpu", seed=args.seed)
            row["seconds"] = round(time.perf_counter() - clock, 2)
            # the model's angles as the user gets them (with the gap channel's tilts, cobb.py)
            outputs["model"] = (result.labels, result.segments, result.measurements.get("cobb_angles_deg"))
        for source, (labels, segments, angles_measured) in outputs.items():
            predicted = sitk.GetArrayFromImage(labels).reshape(truth.shape)
            scores = case_scores(predicted, segments, truth, names)
            if angles is not None:
                scores["cobb_angles_deg"] = angles_measured if source == "model" else cobb.cobb_angles(labels, segments)
                scores["cobb_truth_deg"] = [round(float(a), 2) for a in angles]
            row[source] = scores
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    summary = {"modality": args.modality, "model": card.name, "cases": len(rows), "seed": args.seed}
    if args.modality == "xray":  # held-out radiographs whose landmarks are no truth
        summary["left_out"] = left_out
    for source in ("truth", "model"):
        scored = [row[source] for row in rows if source in row]
        if not scored:
            continue
        per_level = {}
        for scores in scored:
            for level, value in scores["level_dice"].items():
                per_level.setdefault(level, []).append(value)
        summary[source] = {
            **shares(scored),
            "level_dice": {level: round(float(np.mean(values)), 4) for level, values in per_level.items()},
            "separated_share": round(float(np.mean([s["separated_share"] for s in scored])), 4),
            "named_cases": sum(any(s["level_dice"].values()) for s in scored),
        }
        if args.modality == "xray":
            pairs = [(s["cobb_angles_deg"], s["cobb_truth_deg"]) for s in scored]
            summary[source]["cobb_smape_percent"] = cobb.smape([p for p, _ in pairs], [t for _, t in pairs])
            summary[source]["cobb_undetermined"] = sum(p is None for p, _ in pairs)  # images without angles
            summary[source]["cobb_angles_undetermined"] = sum(value is None for p, _ in pairs if p for value in p.values())  # cobb.cobb_measurements
    print(json.dumps({**summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
