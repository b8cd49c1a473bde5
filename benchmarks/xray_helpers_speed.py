"""Seconds the X-ray helper networks add to a run, printed as JSON: loading (with the sha256
check) and predicting the level map (``level_map``), the endplate tilts of 17 vertebrae
(``endplate_tilt``) and completing 17 pieces (the truth quadrilaterals) with their outline
network's quadrilaterals (``vertebra_outline``) on a held-out AASCE radiograph, the median of
``--repeats`` runs.

Usage: python benchmarks/xray_helpers_speed.py [--threads N] [--repeats R]
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
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from VerdiffSegmentLib.endplate_tilt import predict_tilts  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.level_map import predict_level_map  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_level_map, load_outline_network, load_tilt_network  # noqa: E402
from VerdiffSegmentLib.vertebra_outline import outline_vertebrae  # noqa: E402
from training.datasets import aasce_mask  # noqa: E402
from training.endplate_tilt import vertebrae_of  # noqa: E402
from training.xray_helpers import bundled_card, validation_items  # noqa: E402


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        function()
        times.append(time.perf_counter() - clock)
    return round(float(np.median(times)), 4)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = get_card("verdiff-xray")
    image_path, mat = validation_items(args.data, bundled_card())[0]
    picture = sitk.GetArrayFromImage(read_image(image_path)).astype(np.float32)
    centres, widths, _ = vertebrae_of(mat)
    level_network, tilt_network, outline_network = load_level_map(card), load_tilt_network(card), load_outline_network(card)
    pieces = sitk.GetArrayFromImage(aasce_mask(read_image(image_path), mat))
    print(json.dumps({
        "image": image_path.name,
        "shape": list(picture.shape),
        "threads": args.threads,
        "level_map_load_s": median_seconds(lambda: load_level_map(card), args.repeats),
        "level_map_predict_s": median_seconds(lambda: predict_level_map(level_network, picture), args.repeats),
        "tilt_network_load_s": median_seconds(lambda: load_tilt_network(card), args.repeats),
        "tilts_17_vertebrae_s": median_seconds(lambda: predict_tilts(tilt_network, picture, centres, widths), args.repeats),
        "outline_network_load_s": median_seconds(lambda: load_outline_network(card), args.repeats),
        "outline_17_pieces_s": median_seconds(lambda: outline_vertebrae(outline_network, picture, pieces, list(range(1, 18))), args.repeats),
    }, indent=1))


if __name__ == "__main__":
    main()
