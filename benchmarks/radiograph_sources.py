"""Held-out AASCE radiographs as other sources would give them, through ``segment``: JSON figures.

Each variant changes the picture as a radiograph from elsewhere would come (the truth moves with
it), and the per-vertebra scores are ``levels_accuracy``'s:

- ``as_given``: the AASCE picture (8-bit, no pixel size);
- ``inverted``: grey levels mirrored (bone dark, a MONOCHROME1 radiograph read as stored);
- ``dicom_0.15mm``: the picture with a 0.15 mm pixel size, as a DICOM radiograph carries;
- ``half`` / ``double`` / ``third``: the picture resampled to 0.5 / 2 / 0.33 times its size, still
  without a pixel size (a downsampled export, a high-resolution scan);
- ``mirrored``: left and right swapped (a posteroanterior film, as scoliosis series are often
  taken to spare the breasts, shown as the detector saw it).

``VerdiffSegmentLib.radiograph`` decides what the pipeline does with them (docs/levels.md, session 25).

    python benchmarks/radiograph_sources.py [--every 6] [--variants inverted,half] [--model verdiff-xray]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO), str(REPO / "benchmarks")]

import levels_accuracy as la  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card  # noqa: E402
from VerdiffSegmentLib.pipeline import segment  # noqa: E402
from VerdiffSegmentLib.radiograph import inverted  # noqa: E402


def resampled(image: sitk.Image, factor: float, interpolator) -> sitk.Image:
    """``image`` on a grid ``factor`` times as fine (a picture without a pixel size again)."""
    size = [max(int(round(n * factor)), 1) for n in image.GetSize()]
    out = sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), [s / factor for s in image.GetSpacing()], image.GetDirection(), 0, image.GetPixelID())
    out.SetSpacing([1.0] * image.GetDimension())
    return out


def with_spacing(image: sitk.Image, spacing: float) -> sitk.Image:
    out = sitk.Image(image)
    out.SetSpacing([spacing] * image.GetDimension())
    return out


VARIANTS = {
    "as_given": lambda picture, truth: (picture, truth),
    "inverted": lambda picture, truth: (inverted(picture), truth),
    "dicom_0.15mm": lambda picture, truth: (with_spacing(picture, 0.15), with_spacing(truth, 0.15)),
    "half": lambda picture, truth: (resampled(picture, 0.5, sitk.sitkLinear), resampled(truth, 0.5, sitk.sitkNearestNeighbor)),
    "double": lambda picture, truth: (resampled(picture, 2.0, sitk.sitkLinear), resampled(truth, 2.0, sitk.sitkNearestNeighbor)),
    "third": lambda picture, truth: (resampled(picture, 1 / 3, sitk.sitkLinear), resampled(truth, 1 / 3, sitk.sitkNearestNeighbor)),
    "mirrored": lambda picture, truth: (sitk.Flip(picture, [True, False]), sitk.Flip(truth, [True, False])),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=6, help="every n-th held-out radiograph (default 6: 8 of the 48)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--model", default="verdiff-xray")
    args = parser.parse_args()
    card = get_card(args.model)
    cases = [case for k, case in enumerate(la.xray_cases(card)) if k % args.every == 0]
    out = {"model": card.name, "cases": len(cases), "variants": {}}
    for variant in args.variants.split(","):
        scored, adjustments, clock = [], [], time.perf_counter()
        for name, path, truth_image, names, _ in cases:
            picture, truth = VARIANTS[variant](read_image(path), truth_image)
            truth_array = sitk.GetArrayFromImage(truth)
            result = segment(picture, card, device="cpu")
            predicted = sitk.GetArrayFromImage(result.labels).reshape(truth_array.shape)
            scored.append(la.case_scores(predicted, result.segments, truth_array, la.truth_levels_present(truth_array, names)))
            adjustments.append({"case": name, **(result.settings.get("radiograph") or {})})
        out["variants"][variant] = {**la.shares(scored), "seconds_per_case": round((time.perf_counter() - clock) / len(cases), 1), "radiograph": adjustments}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
