"""A planar MR model on single 2D sagittal slices, its use: the mid-sagittal slice of each held-out
VB3 subject and the slices ``--offsets`` mm to either side, each given to the pipeline as a 2D
picture (head up), scored against that slice of the truth: binary Dice, level Dice and the
share of bodies named right and wrong. Prints JSON.

    python benchmarks/mr_single_slices.py [--model verdiff-mr-2d] [--offsets -6 0 6]

Another bundle's card (an export under test): ``VERDIFF_MODELS_DIR=DIR``.
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
sys.path[:0] = [str(ROOT / "VerdiffSegment"), str(ROOT), str(ROOT / "benchmarks")]
DATA = ROOT.parent / "shared" / "data"

from VerdiffSegmentLib.models import get_card  # noqa: E402
from VerdiffSegmentLib.pipeline import segment  # noqa: E402
from training.splits import MR_VALIDATION  # noqa: E402
from levels_accuracy import case_scores, shares  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="verdiff-mr-2d")
    parser.add_argument("--offsets", type=float, nargs="+", default=[-6.0, 0.0, 6.0], help="mm from the mid-sagittal slice")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    rows = []
    for subject in MR_VALIDATION:
        image = sitk.ReadImage(str(DATA / "mr-lumbar-vb3" / f"{subject}_img.nii.gz"))
        truth_volume = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "mr-lumbar-vb3" / f"{subject}_seg.nii.gz")))
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        middle = float(np.argwhere(truth_volume > 0)[:, 0].mean())
        for offset in args.offsets:
            index = int(round(middle + offset / image.GetSpacing()[0]))
            # VB3's arrays are [sagittal, anterior-posterior, inferior-superior from the head]: transposed, the head is up
            picture = sitk.GetImageFromArray(np.ascontiguousarray(array[index].T))
            picture.SetSpacing((image.GetSpacing()[1], image.GetSpacing()[2]))
            truth = np.ascontiguousarray(truth_volume[index].T)
            names = {k: f"L{k}" for k in range(1, 6) if (truth == k).any()}
            result = segment(picture, card, device="cpu")
            labels = sitk.GetArrayFromImage(result.labels).reshape(truth.shape)
            scores = case_scores(labels, result.segments, truth, names)
            rows.append({"case": subject, "offset_mm": offset, **{k: scores[k] for k in ("binary_dice", "level_dice_mean", "vertebrae", "correctly_named", "wrongly_named")}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"model": card.name, "slices": len(rows), **shares(rows), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
