"""The AASCE spine's proportions that ``cobb.LEVEL_STEPS`` and ``cobb.LEVEL_WIDTHS`` hold.

On each training radiograph of the X-ray card's split (its held-out images left out), from the
68 landmarks: the distance between neighbouring vertebrae's centres (T1-T2 .. L4-L5) and each
vertebra's width (middle of its left edge to middle of its right edge), each divided by its
mean along that spine; then the median over the radiographs. Then how far ``cobb.estimate_missing_ends``
places a vertebra from its landmark centre, in that radiograph's local steps, by how many levels
beyond the chain's end it lies: the chain cut at T2..T8 (the vertebrae above placed from the
top two) and at L2..L4 (below). Prints JSON.

    python benchmarks/spine_profile.py [--card verdiff-xray]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "VerdiffSegment"), str(ROOT)]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

from VerdiffSegmentLib.cobb import placed_centres  # noqa: E402
from VerdiffSegmentLib.models import get_card  # noqa: E402
from training.datasets import aasce_cases, read_landmarks  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", default="verdiff-xray")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    held_out = set(get_card(args.card).validation_cases)
    files = {name: mat for name, _, mat in aasce_cases(args.data / "xray-aasce", usable_only=True) if name not in held_out}
    steps, widths = [], []
    for mat in files.values():
        corners = read_landmarks(mat)  # TL, TR, BL, BR
        step = np.linalg.norm(np.diff(corners.mean(axis=1), axis=0), axis=1)
        width = np.linalg.norm((corners[:, 1] + corners[:, 3]) / 2 - (corners[:, 0] + corners[:, 2]) / 2, axis=1)
        steps.append(step / step.mean())
        widths.append(width / width.mean())
    steps, widths = np.array(steps), np.array(widths)
    level_steps = np.median(steps, axis=0)
    errors: dict[str, list[float]] = {}
    for mat in files.values():
        centres = read_landmarks(mat).mean(axis=1)
        local = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        for end, inner in [(top, top + 1) for top in range(1, 8)] + [(bottom, bottom - 1) for bottom in (13, 14, 15)]:
            above = inner > end
            for distance, (index, position, _) in enumerate(placed_centres(centres[end], centres[inner], end, inner, level_steps), start=1):
                errors.setdefault(f"{'above' if above else 'below'} {distance}", []).append(float(np.linalg.norm(position - centres[index]) / local[min(index, index + (1 if above else -1))]))
    print(json.dumps({
        "radiographs": len(steps),
        "level_steps": np.round(np.median(steps, axis=0), 3).tolist(),
        "level_steps_iqr": np.round(np.subtract(*np.percentile(steps, [75, 25], axis=0)), 3).tolist(),
        "level_widths": np.round(np.median(widths, axis=0), 3).tolist(),
        "placement_error_in_steps": {key: {"n": len(e), "median": round(float(np.median(e)), 3), "p90": round(float(np.percentile(e, 90)), 3),
                                           "share_within_half_a_step": round(float(np.mean(np.array(e) < 0.5)), 3)} for key, e in errors.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
