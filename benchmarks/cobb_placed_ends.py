"""Cobb SMAPE when the segmented spine stops short, with and without its missing end vertebrae
placed (``cobb.estimate_missing_ends``), on training radiographs; prints JSON.

Each radiograph's landmark vertebrae (filled quadrilaterals, separated and named as the
per-vertebra step does) are cut to start at ``--cuts`` (T2 .. T8: what the X-ray model leaves
of a faint upper thoracic spine); the endplate-tilt network reads every tilt, and the angles
are compared with ``angles.csv`` three ways: the short chain alone (undetermined angles count
as 0, as in SMAPE), every missing vertebra placed, and at most ``--cap`` placed (an end needing
more left alone). The radiographs are training ones (every 7th outside the X-ray card's held-out
split, ``--images`` of them), so the choice made from this does not look at the held-out images.

    python benchmarks/cobb_placed_ends.py [--images 40] [--cuts 2 3 4 6 8] [--cap 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "VerdiffSegment"), str(ROOT)]
DATA = ROOT.parent / "shared" / "data"

from VerdiffSegmentLib import cobb, levels  # noqa: E402
from VerdiffSegmentLib.endplate_tilt import predict_tilts, vertebra_tilts  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_tilt_network  # noqa: E402


def cut_chain(root: Path, name: str, first: int, spine: list[str]):
    """The picture, the label map and named segments of a radiograph's landmark vertebrae from
    level index ``first`` (0 = T1) down to L5."""
    from training.datasets import aasce_mask

    image = sitk.ReadImage(str(root / "data" / "training" / f"{name}.jpg"))
    truth = sitk.GetArrayFromImage(aasce_mask(image, root / "labels" / "training" / f"{name}.jpg.mat"))
    kept = sitk.GetImageFromArray(np.isin(truth, range(first + 1, 18)).astype(np.uint8))
    kept.CopyInformation(image)
    labels, segments = levels.vertebrae(kept, "vertebral body", levels=spine)
    for segment, level in zip(segments, spine[first:]):
        segment["level"] = level
    return sitk.GetArrayFromImage(image).astype(np.float32), labels, segments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--cuts", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="the chain's first level, T<n>")
    parser.add_argument("--cap", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    card = get_card("verdiff-xray")
    network, spine = load_tilt_network(card), levels.card_levels(card)
    root = args.data / "xray-aasce"
    names = [line.strip().removesuffix(".jpg") for line in (root / "labels" / "training" / "filenames.csv").read_text().splitlines() if line.strip()]
    angles = np.loadtxt(root / "labels" / "training" / "angles.csv", delimiter=",")
    held_out = set(card.validation_cases)
    chosen = [name for name in names if name not in held_out][::7][: args.images]
    rows: dict[str, list] = {}
    for name in chosen:
        truth = angles[names.index(name)].tolist()
        for cut in args.cuts:
            picture, labels, segments = cut_chain(root, name, cut - 1, spine)
            if len(segments) != 18 - cut:  # the step merged or split a landmark body: not this cut's chain
                continue
            array = sitk.GetArrayFromImage(labels)
            tilts = vertebra_tilts(network, picture, array, [int(s["value"]) for s in segments])
            placed = cobb.estimate_missing_ends(array, segments, spine)
            for vertebra, tilt in zip(placed, predict_tilts(network, picture, np.array([e["centre"] for e in placed]).reshape(-1, 2), np.array([e["width"] for e in placed]))):
                vertebra["tilt_deg"] = float(tilt)
            capped = placed if len(placed) <= args.cap else []
            for variant, estimated in (("short chain", None), ("all placed", placed), (f"at most {args.cap} placed", capped)):
                measured = cobb.cobb_measurements(labels, segments, None, tilts, (spine[0], spine[-1]), estimated)
                rows.setdefault(f"T{cut}: {variant}", []).append((measured["cobb_angles_deg"], truth))
    print(json.dumps({key: {"radiographs": len(pairs), "cobb_smape_percent": cobb.smape([p for p, _ in pairs], [t for _, t in pairs]),
                            "undetermined_angles": sum(v is None for p, _ in pairs for v in (p or {}).values())} for key, pairs in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
