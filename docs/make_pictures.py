"""Make the pictures in docs/ from real segmentations: ``python docs/make_pictures.py``.

Runs ``verdiff segment --preview`` (through ``cli.run_segment``, the bundled default models
and settings, seed 0) on a held-out MR (VB3_17), the held-out abdominal CT and a held-out
AASCE radiograph from ``../shared/data``, and writes ``docs/preview_mr.png``,
``docs/preview_ct.png`` and ``docs/preview_xray.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO)]

from VerdiffSegmentLib.cli import run_segment  # noqa: E402


def held_out_xray(data: Path) -> Path:
    card = json.loads((REPO / "Resources" / "Models" / "verdiff-xray.json").read_text())
    return data / "xray-aasce" / "data" / "training" / f"{card['training']['split']['validation'][0]}.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    inputs = {
        "mr": args.data / "mr-lumbar-vb3" / "VB3_17_img.nii.gz",
        "ct": args.data / "ct-abdomen-small" / "example_ct.nii.gz",
        "xray": held_out_xray(args.data),
    }
    with tempfile.TemporaryDirectory(prefix="verdiff-pictures-") as tmp:
        for name, source in inputs.items():
            report = run_segment(source, Path(tmp) / name, preview=True, scene=False)
            target = args.out / f"preview_{name}.png"
            Image.open(report["outputs"]["preview"]).save(target, optimize=True)
            print(f"{target}: {target.stat().st_size // 1024} KB ({report['model']}, {report['timings_seconds']['total']:.1f} s)")


if __name__ == "__main__":
    main()
