"""Robustness figures: Dice of each transformed run against the canonical run; JSON lines.

    .venv/bin/python benchmarks/robustness.py [--parts mr,noise,xray,ct] [--write docs/reliability.md]

- ``mr``: VB3_17 (held out) stored in each of the 24 axis orders and flips that are
  rotations of the voxel grid (the signed permutations of determinant +1), with the
  direction matrix and origin updated (``sitk.PermuteAxes``/``sitk.Flip``): the same
  physical image. The label map is resampled back onto the canonical grid (nearest
  neighbour) and compared with the canonical run's, per label (mean Dice over L1..L5).
  Geometry is read from the direction matrix, so this should be >= 0.99.
- ``noise``: the same MR with Gaussian noise of sigma = 0.05, 0.1, 0.2 of its intensity
  range (max - min) added (the LDSeg paper's test); Dice against the canonical run and
  against the manual labels.
- ``xray``: a held-out AASCE X-ray rotated 90 degrees and mirrored left-right *in its
  pixels* (a JPG has no direction matrix: the network really sees a turned image); the
  result is turned back and compared with the canonical run's.
- ``ct``: the 24 orientations of the chest CT (about 40 s each on one CPU thread: not in the
  default parts).

One process, the network loaded once, the card's default steps and ensemble, seed 0, CPU.
With ``--write`` the results replace the robustness section of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO), str(REPO / "benchmarks")]

from reliability import DATA, MR_IMAGE, ROBUSTNESS_MARK  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.metrics import dice  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_network  # noqa: E402
from VerdiffSegmentLib.pipeline import segment  # noqa: E402

MR_LABELS = DATA / "mr-lumbar-vb3" / "VB3_17_seg.nii.gz"
CT_IMAGE = DATA / "ct-chest" / "cxr_ct_int16.nii.gz"
NOISE_SIGMAS = (0.05, 0.1, 0.2)


def rotations_of_the_grid():
    """The 24 (axis order, flips) pairs whose index map has determinant +1."""
    for order in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            matrix = np.eye(3)[list(order)] * np.where(flips, -1, 1)
            if round(np.linalg.det(matrix)) == 1:
                yield order, flips


def mean_dice(labels: np.ndarray, reference: np.ndarray, values) -> float:
    return float(np.mean([dice(labels == v, reference == v) for v in values]))


class Runner:
    def __init__(self, model: str):
        self.card = get_card(model)
        self.network = load_network(self.card, "cpu")
        self.values = [label["value"] for label in self.card.labels]

    def labels(self, image: sitk.Image) -> sitk.Image:
        """The model's own labels (``per_vertebra=False``): the card's values, which the manual
        labels and ``self.values`` use. With one value per vertebra (the default output), a
        binary model's value 1 would be only the first vertebra found."""
        return segment(image, self.card, device="cpu", network=self.network, per_vertebra=False).labels


def orientations(path: Path, model: str):
    image = read_image(path)
    runner = Runner(model)
    canonical = sitk.GetArrayFromImage(runner.labels(image))
    for order, flips in rotations_of_the_grid():
        clock = time.perf_counter()
        stored = sitk.PermuteAxes(sitk.Flip(image, list(flips)), list(order))
        back = sitk.Resample(runner.labels(stored), image, sitk.Transform(), sitk.sitkNearestNeighbor)
        yield {
            "part": "orientation",
            "input": path.name,
            "model": model,
            "case": f"axes {order} flips {''.join('F' if f else '-' for f in flips)}",
            "dice_vs_canonical": round(mean_dice(sitk.GetArrayFromImage(back), canonical, runner.values), 4),
            "seconds": round(time.perf_counter() - clock, 1),
        }


def noise(path: Path, model: str):
    image = read_image(path)
    runner = Runner(model)
    canonical = sitk.GetArrayFromImage(runner.labels(image))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(MR_LABELS)))
    if len(runner.values) == 1:  # a one-label model covers L1..L5 (manual labels 1..5) together
        truth = np.where(truth > 0, runner.values[0], 0)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    span = float(array.max() - array.min())
    rows = [("none", canonical)]
    for sigma in NOISE_SIGMAS:
        noisy = array + np.random.default_rng(0).normal(0, sigma * span, array.shape).astype(np.float32)
        spoiled = sitk.GetImageFromArray(noisy)
        spoiled.CopyInformation(image)
        rows.append((f"sigma {sigma} x range", sitk.GetArrayFromImage(runner.labels(spoiled))))
    for name, labels in rows:
        yield {
            "part": "noise",
            "input": path.name,
            "model": model,
            "case": f"Gaussian noise {name}",
            "dice_vs_canonical": round(mean_dice(labels, canonical, runner.values), 4),
            "dice_vs_manual": round(mean_dice(labels, truth, runner.values), 4),
        }


def xray():
    sys.path.insert(0, str(REPO / "Testing"))
    from conftest import xray_image

    path = xray_image()
    image = read_image(path)
    runner = Runner("verdiff-xray")
    array = sitk.GetArrayFromImage(image)
    canonical = sitk.GetArrayFromImage(runner.labels(image))
    for name, forward, backward in (
        ("rotated 90 degrees", lambda a: np.rot90(a, 1), lambda a: np.rot90(a, -1)),
        ("rotated 270 degrees", lambda a: np.rot90(a, -1), lambda a: np.rot90(a, 1)),
        ("mirrored left-right", np.fliplr, np.fliplr),
    ):
        turned = sitk.GetImageFromArray(np.ascontiguousarray(forward(array)))
        turned.SetSpacing(image.GetSpacing())
        labels = backward(sitk.GetArrayFromImage(runner.labels(turned)))
        yield {
            "part": "xray",
            "input": path.name,
            "model": "verdiff-xray",
            "case": name,
            "dice_vs_canonical": round(mean_dice(labels, canonical, runner.values), 4),
        }


def section(rows: list[dict], parts: list[str]) -> str:
    lines = [
        ROBUSTNESS_MARK,
        "## Robustness: Dice against the canonical run",
        "",
        "Generated by `python benchmarks/robustness.py --parts " + ",".join(parts) + " --write docs/reliability.md`",
        "(CPU, card defaults, seed 0). Orientation: the same physical image stored in another",
        "axis order and flips (geometry updated), result resampled back; mean Dice over the",
        "model's labels. Noise: sigma as a fraction of the intensity range, also against the",
        "manual labels. X-ray: pixels turned (no geometry), result turned back.",
        "",
        "| part | input | model | case | Dice vs canonical | Dice vs manual |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['part']} | {row['input']} | {row['model']} | {row['case']} | {row['dice_vs_canonical']} | {row.get('dice_vs_manual', '')} |")
    for name in dict.fromkeys(r["input"] for r in rows if r["part"] == "orientation"):
        orientation = [r["dice_vs_canonical"] for r in rows if r["part"] == "orientation" and r["input"] == name]
        lines += ["", f"Orientation, {name}: minimum Dice {min(orientation)} over {len(orientation)} orientations (target >= 0.99)."]
    not_run = [p for p in ("mr", "noise", "xray", "ct") if p not in parts]
    if not_run:
        lines += ["", f"Not run for this table: {', '.join(not_run)} (run them with `--parts {','.join(not_run)}`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="mr,noise,xray", help="comma-separated: mr, noise, xray, ct")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    parts = args.parts.split(",")
    jobs = {
        "mr": lambda: orientations(MR_IMAGE, "verdiff-mr"),
        "noise": lambda: noise(MR_IMAGE, "verdiff-mr"),
        "xray": xray,
        "ct": lambda: orientations(CT_IMAGE, "verdiff-ct"),
    }
    rows = []
    for part in parts:
        for row in jobs[part]():
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.write:
        text = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(text.split(ROBUSTNESS_MARK, 1)[0].rstrip("\n") + "\n\n" + section(rows, parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
