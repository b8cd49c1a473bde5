"""The ``verdiff`` command: ``verdiff segment INPUT -o OUTDIR`` and ``verdiff models``.

Outputs of ``segment`` for input stem S (all in OUTDIR, and only after everything
succeeded: they are written to a temporary folder beside OUTDIR and moved in at the end,
so a failure leaves OUTDIR as it was):

- ``S_labels.nrrd``: the label map in the input's geometry (2D for a 2D input);
- ``S_uncertainty.nrrd``: float32 spread of the ensemble, same geometry;
- ``S.seg.nrrd``: a Slicer segmentation, one named, coloured segment per label;
- ``S.mrb``: a Slicer scene bundle with the input volume, the segmentation and the
  uncertainty volume;
- ``S.json``: settings, timings, per-segment statistics and the path of every output.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .errors import VerdiffError
from .io import read_image
from .models import list_cards
from .pipeline import choose_card, segment

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff")


def output_stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _import_quietly(name: str) -> None:
    try:
        importlib.import_module(name, __package__)
    except Exception:  # noqa: BLE001 - the real import in run_segment reports it
        pass


def run_segment(input, output, model="auto", steps=None, ensemble=None, device="auto", seed=0, batch_size=8) -> dict:
    """Segment the image at ``input`` and write every output into the folder ``output``;
    returns the report that is also written as JSON."""
    total = time.perf_counter()
    # slicer-core (for the .seg.nrrd and .mrb) takes 1-4 s to import, mostly loading shared
    # libraries: import it on a side thread while the image is read and segmented (torch
    # releases the GIL in its kernels), so an X-ray does not wait for it at the end.
    prefetch = threading.Thread(target=_import_quietly, args=(".mrml",), daemon=True)
    prefetch.start()
    clock = time.perf_counter()
    source = Path(input)
    image = read_image(source)
    read_seconds = time.perf_counter() - clock
    card = choose_card(image, model)
    result = segment(image, card, steps, ensemble, device, seed, batch_size)
    stem = output_stem(source)
    outdir = Path(output)
    if outdir.exists() and not outdir.is_dir():
        raise VerdiffError(f"output {outdir} exists and is not a folder")
    outdir.parent.mkdir(parents=True, exist_ok=True)

    clock = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=".verdiff-", dir=outdir.parent))
    try:
        prefetch.join()
        from .mrml import write_outputs  # raises here, in the caller's thread, if the import failed

        names = {"labels": f"{stem}_labels.nrrd", "uncertainty": f"{stem}_uncertainty.nrrd"}
        sitk.WriteImage(result.labels, str(staging / names["labels"]), True)
        sitk.WriteImage(result.uncertainty, str(staging / names["uncertainty"]), True)
        segments = [{"label": s["value"], "name": s["name"], "color": s["color"], "terminology": s.get("terminology"), "level": s.get("level")} for s in result.segments]
        written = write_outputs(image, result.labels, result.uncertainty, segments, stem, staging, statistics=result.segments)
        names.update({key: Path(path).name for key, path in written.items()})
        outputs = {key: str((outdir / name).resolve()) for key, name in names.items()}
        result.timings["write"] = time.perf_counter() - clock
        result.timings["read"] = read_seconds
        result.timings["total"] = time.perf_counter() - total
        report = {
            "verdiff_version": __version__,
            "input": str(source.resolve()),
            **result.settings,
            "timings_seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "segments": result.segments,
            **result.measurements,
            "outputs": outputs,
        }
        (staging / f"{stem}.json").write_text(json.dumps(report, indent=2))
        outdir.mkdir(exist_ok=True)
        for item in staging.iterdir():
            item.replace(outdir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def run_models(args) -> None:
    cards = list_cards()
    if args.json:
        print(json.dumps([card.data for card in cards], indent=2))
        return
    for card in cards:
        print(card.summary())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verdiff", description="Spine segmentation with diffusion models and uncertainty.")
    parser.add_argument("--version", action="version", version=f"verdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment the spine in an image")
    seg.add_argument("input", help="NIfTI, NRRD, MHA, DICOM series folder, JPG or PNG")
    seg.add_argument("-o", "--output", required=True, help="output folder")
    seg.add_argument("--model", default="auto", help="bundled model name, or auto (by modality)")
    seg.add_argument("--steps", type=int, default=None, help="sampling steps, 1..1000 (default: the model card's)")
    seg.add_argument("--ensemble", type=int, default=None, help="samples averaged, 1..32 (default: the model card's)")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--batch-size", type=int, default=8, help="sagittal slices per network batch")
    models = sub.add_parser("models", help="list the bundled models")
    models.add_argument("--json", action="store_true", help="print the full model cards")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "segment":
            report = run_segment(args.input, args.output, args.model, args.steps, args.ensemble, args.device, args.seed, args.batch_size)
            print(json.dumps({"outputs": report["outputs"], "timings_seconds": report["timings_seconds"]}, indent=2))
        else:
            run_models(args)
    except VerdiffError as error:
        print(f"verdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
