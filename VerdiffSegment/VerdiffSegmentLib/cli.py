"""The ``verdiff`` command: ``verdiff segment INPUT [INPUT ...] -o OUTDIR`` and ``verdiff models``.

Outputs of ``segment`` for input stem S (all in OUTDIR, all or none: they are staged in
a hidden folder and moved in at the end, the JSON last, by ``outputs.staged_outputs``;
a failure or a kill leaves OUTDIR as it was):

- ``S_labels.nrrd`` (``--format nifti``: ``S_labels.nii.gz``): the label map in the
  input's geometry (2D for a 2D input);
- ``S_uncertainty.nrrd`` (``.nii.gz``): float32 spread of the ensemble, same geometry;
- ``S.seg.nrrd``: a Slicer segmentation, one named, coloured segment per label;
- ``S.mrb``: a Slicer scene bundle with the input volume, the segmentation and the
  uncertainty volume. ``--no-scene`` leaves it out: the bundle must hold a copy of the
  input (an .mrb that referenced the input file would break when either is moved), so
  for a cohort, where the inputs are kept anyway, it is mostly a second copy of them.
  ``--volumes-only`` leaves out both Slicer files (``.seg.nrrd`` and ``.mrb``): what the
  Slicer module's process (``process``) writes, as the module builds its nodes itself; such
  a run needs neither vtk nor slicer-core;
- ``S_preview.png`` with ``--preview`` (``preview``);
- ``S.json``: settings, timings, warnings, per-segment statistics and the path of every
  output under ``outputs``, itself included (key ``report``).

Several inputs, or a folder of images (a folder holding image files other than ``.dcm``;
any other folder is read as one DICOM series), make a batch: each input gets the folder
``OUTDIR/<stem>/`` (``<stem>-2``... when stems repeat), each model is loaded once, a
failing input is reported and skipped, and ``OUTDIR/summary.csv`` and ``summary.json``
list every case; the exit code is 2 when any failed. ``--shard K/N`` runs the K-th of N
interleaved parts of the sorted input list (``summary-K-of-N.*``), the same on every
machine. One file (or DICOM folder) writes straight into OUTDIR, as always.

Stdout gets a short human summary (model, settings, time, each segment's volume or area
and mean uncertainty, the outputs); ``--json`` prints the report (a batch: the summary)
as JSON instead, for programs; ``--quiet`` prints nothing but warnings and errors.
Progress goes to stderr (``progress``).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import sys
import textwrap
import threading
import time
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .errors import VerdiffError
from .io import read_image
from .models import AUTO_MODALITY, list_cards, load_network
from .outputs import check_output_folder, staged_outputs
from .pipeline import check_card_fits, choose_card, detect_modality, resolve_device, segment
from .progress import MODES, ProgressPrinter, StageTracker
from .settings import BATCH_SIZE_LIMITS, DEFAULT_BATCH_SIZE, MAX_ENSEMBLE, SEED_LIMITS, SegmentSettings

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff")
# File types that carry no pixel size SimpleITK can trust (it reads them as 1 x 1).
PIXEL_FORMATS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
MODALITY_NAMES = {"XR": "X-ray", "CT": "CT", "MR": "MR"}


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


def spacing_known(path: Path, image: sitk.Image) -> bool:
    """False for a JPG/PNG/TIFF whose pixel size reads as exactly 1 x 1: SimpleITK gives that
    when the file states none (AASCE radiographs), so sizes are then in pixels, not mm."""
    return not (path.suffix.lower() in PIXEL_FORMATS and all(s == 1.0 for s in image.GetSpacing()))


PIXEL_KEYS = {"area_mm2": "area_px", "height_mm": "height_px"}


def in_pixels(segments: list[dict]) -> list[dict]:
    """Segments of an image whose spacing is unknown: ``area_mm2`` becomes ``area_px`` (the
    pixel count) and ``height_mm`` ``height_px`` (the same number: the spacing read was 1)."""
    return [{PIXEL_KEYS.get(key, key): (segment["voxels"] if key == "area_mm2" else value) for key, value in segment.items()} for segment in segments]


def modality_warning(detected: str, card, name: str) -> str | None:
    """A warning when the input (of ``pipeline.detect_modality`` ``detected``) does not look
    like what the model was trained on."""
    expected = card.modality
    if detected == expected:
        return None
    looks = {"XR": "a 2D image (an X-ray)", "CT": "a CT (its intensities are Hounsfield units)", "MR": "an MR (no Hounsfield units)" if expected == "CT" else "a volume"}[detected]
    return (
        f"{name} looks like {looks} but model {card.name} was trained on {MODALITY_NAMES.get(expected, expected)} images; "
        f"the result may be poor (--model auto picks {AUTO_MODALITY[detected]})"
    )


class Networks:
    """The networks a command has loaded, by model and device: a batch loads each once."""

    def __init__(self):
        self._loaded = {}

    def get(self, card, device, progress=None):
        key = (card.name, str(device))
        if key not in self._loaded:
            if progress is not None:
                progress("load_model", 0, 1)
            self._loaded[key] = load_network(card, device)
            if progress is not None:
                progress("load_model", 1, 1)
        return self._loaded[key]


def run_segment(
    input,
    output,
    settings: SegmentSettings = SegmentSettings(),
    *,
    output_format="nrrd",
    scene=True,
    preview=False,
    slicer_files=True,
    progress=None,
    networks: Networks | None = None,
    warn=None,
) -> dict:
    """Segment the image at ``input`` and write every output into the folder ``output``;
    returns the report that is also written as JSON. ``progress(stage, done, total)`` gets
    the stages of ``progress.STAGES``; ``warn(text)`` each warning (they are in the report too)."""
    total = time.perf_counter()
    if output_format not in FORMATS:
        raise VerdiffError(f"unknown output format {output_format!r}; use {' or '.join(FORMATS)}")
    report_stage = progress or (lambda stage, done, total: None)
    clock = time.perf_counter()
    source = Path(input)
    check_output_folder(output)  # a folder that cannot be written fails now, not after the work
    report_stage("read", 0, 1)
    image = read_image(source)
    report_stage("read", 1, 1)
    read_seconds = time.perf_counter() - clock
    card = choose_card(image, settings.model)
    modality = detect_modality(image)
    check_card_fits(image, card)  # an impossible model is an error, not first a warning
    settings = settings.for_card(card)  # steps and ensemble out of this model's range: an error before the model loads
    # slicer-core (for the .seg.nrrd and .mrb) takes 1-4 s to import, mostly loading shared
    # libraries: import it on a side thread while the model loads and segments (torch releases
    # the GIL in its kernels), so an X-ray does not wait for it at the end. Started once the
    # input has been read and checked, so a bad file fails at once; not a daemon, so an error
    # later waits for it: a daemon thread still inside the libraries' C++ when the interpreter
    # exits is unwound by force and aborts the process ("FATAL: exception not rethrown", exit
    # -6 instead of the one error line: seen once in a fresh-clone CI run of the truncated gzip
    # NRRD case, session 40; 36 runs of it alone did not repeat it).
    prefetch = threading.Thread(target=_import_quietly, args=(".slicer_bound.mrml",))
    if slicer_files:
        prefetch.start()
    warnings = [w for w in [modality_warning(modality, card, source.name)] if w]
    for warning in warnings:
        if warn is not None:
            warn(warning)
    clock = time.perf_counter()
    torch_device = resolve_device(settings.device)
    network = (networks or Networks()).get(card, torch_device, report_stage)
    if isinstance(progress, ProgressPrinter):
        progress.unit = "windows" if card.spatial_dims == 3 else "slices"
    load_seconds = time.perf_counter() - clock
    report_stage("preprocess", 0, 1)
    stages = StageTracker(report_stage)
    result = segment(image, card, **{**settings.segment_arguments(), "device": torch_device}, network=network, progress=stages, cancel=stages.cancel)
    if not stages.sampling:
        report_stage("preprocess", 1, 1)
    report_stage("postprocess", 1, 1)
    for warning in result.settings["reliability"]["warnings"]:  # the run's own doubt (reliability.py)
        warnings.append(warning)
        if warn is not None:
            warn(warning)
    segments = result.segments if spacing_known(source, image) else in_pixels(result.segments)
    stem = output_stem(source)
    outdir = Path(output)

    report_stage("write", 0, 1)
    clock = time.perf_counter()
    with staged_outputs(outdir) as staging:
        suffix = FORMATS[output_format]
        names = {"labels": f"{stem}_labels{suffix}", "uncertainty": f"{stem}_uncertainty{suffix}"}
        sitk.WriteImage(result.labels, str(staging / names["labels"]), True)
        sitk.WriteImage(result.uncertainty, str(staging / names["uncertainty"]), True)
        segment_styles = [{"label": s["value"], "name": s["name"], "color": s["color"], "terminology": s.get("terminology"), "level": s.get("level")} for s in result.segments]
        if slicer_files:
            prefetch.join()
            from .slicer_bound.mrml import write_outputs  # raises here, in the caller's thread, if the import failed

            written = write_outputs(image, result.labels, result.uncertainty, segment_styles, stem, staging, scene_bundle=scene, statistics=result.segments)
            names.update({key: Path(path).name for key, path in written.items()})
        settings = {**result.settings, "output_format": output_format}
        if preview:
            from .preview import write_preview

            caption = preview_caption(stem, settings, segments)
            names["preview"] = write_preview(staging / f"{stem}_preview.png", image, result.labels, result.uncertainty, caption, result.measurements, result.segments).name
        names["report"] = f"{stem}.json"
        outputs = {key: str((outdir / name).resolve()) for key, name in names.items()}
        result.timings["load_model"] = result.timings.get("load_model", 0.0) + load_seconds
        result.timings["write"] = time.perf_counter() - clock
        result.timings["read"] = read_seconds
        result.timings["total"] = time.perf_counter() - total
        report = {
            "verdiff_version": __version__,
            "input": str(source.resolve()),
            "modality": {"model": card.modality, "input": modality},
            **settings,
            "timings_seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "warnings": warnings,
            "segments": segments,
            **result.measurements,
            "outputs": outputs,
        }
        (staging / names["report"]).write_text(json.dumps(report, indent=2))
    report_stage("write", 1, 1)
    return report


# ----------------------------------------------------------------------------- reporting


def segment_size(segment: dict) -> tuple[str, float | None]:
    """(unit, value) of a segment's size: volume (mm3), area (mm2) or area in pixels."""
    for key, unit in (("volume_mm3", "mm3"), ("area_mm2", "mm2"), ("area_px", "px")):
        if key in segment:
            return unit, segment[key]
    return "voxels", segment.get("voxels")


def size_text(segment: dict) -> str:
    unit, value = segment_size(segment)
    if value is None:
        return "-"
    if unit == "mm3":
        return f"{value / 1000:.2f} cm3"
    return f"{value:.0f} {unit}"


def settings_text(report: dict) -> str:
    sampling = "one pass (deterministic)" if not report.get("steps") else f"{report['steps']} step{'s' if report['steps'] != 1 else ''} x {report['ensemble']} samples"
    return f"{report['model']} v{report['model_version']} ({report['family']}) on {report['device']}: {sampling}, seed {report['seed']}"


def preview_caption(stem: str, settings: dict, segments: list[dict]) -> list[str]:
    found = [s for s in segments if s.get("voxels")]
    if len(segments) == 1:
        s = segments[0]
        what = f"{s['name']}: {size_text(s)}, mean uncertainty {s['mean_uncertainty'] if s['mean_uncertainty'] is not None else '-'}"
    else:
        what = f"{len(found)} of {len(segments)} segments found"
    return [f"{stem}", settings_text(settings), what, "cyan: segmentation outline; heat map: uncertainty (std of the ensemble)"]


def human_summary(report: dict) -> str:
    """The end-of-run text on stdout."""
    out = io.StringIO()
    print(f"{Path(report['input']).name}: {settings_text(report)}, {report['timings_seconds']['total']:.1f} s", file=out)
    for warning in report.get("warnings", []):
        print(f"  warning: {warning}", file=out)
    rows = [(s["name"], size_text(s), "-" if s.get("mean_uncertainty") is None else f"{s['mean_uncertainty']:.4f}") for s in report["segments"]]
    width = max([len("segment")] + [len(r[0]) for r in rows])
    size_header = {"mm3": "volume", "mm2": "area", "px": "area (pixels)"}.get(segment_size(report["segments"][0])[0], "size") if report["segments"] else "size"
    print(f"  {'segment':<{width}}  {size_header:>13}  mean uncertainty", file=out)
    for name, size, uncertainty in rows:
        print(f"  {name:<{width}}  {size:>13}  {uncertainty}", file=out)
    left_out = report.get("vertebrae_left_out") or []  # named beyond the card's levels (levels.py, step 4)
    if left_out:
        print(f"  left out, beyond the levels the model segments: {', '.join(v['name'] for v in left_out)}", file=out)
    outputs = report["outputs"]
    print(f"  outputs in {Path(outputs['report']).parent}:", file=out)
    for key, path in outputs.items():
        print(f"    {key:<13} {Path(path).name}", file=out)
    return out.getvalue()


# ----------------------------------------------------------------------------- batches


def is_image_folder(path: Path) -> bool:
    """A folder holding image files other than .dcm (a DICOM series folder holds none)."""
    return path.is_dir() and any(child.is_file() and not child.name.startswith(".") and output_stem(child) != child.name and not child.name.lower().endswith(".dcm") for child in path.iterdir())


def expand_inputs(inputs: list) -> list[Path]:
    """Each argument as given, a folder of images as its image files; sorted, duplicates once."""
    found = set()
    for item in map(Path, inputs):
        if is_image_folder(item):
            found.update(c for c in item.iterdir() if c.is_file() and not c.name.startswith(".") and output_stem(c) != c.name and not c.name.lower().endswith(".dcm"))
        else:
            found.add(item)
    return sorted(found, key=lambda p: str(p))


def case_names(paths: list[Path]) -> list[str]:
    """Subfolder names: the stem, then stem-2, stem-3... for repeats (in sorted input order)."""
    names, seen = [], {}
    for path in paths:
        stem = output_stem(path) or "input"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard needs K/N with whole numbers, e.g. 2/8; got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """The K-th of N interleaved parts (1-based): items K-1, K-1+N, K-1+2N... of the sorted list."""
    if shard is None:
        return items
    k, n = shard
    return items[k - 1 :: n]


SUMMARY_COLUMNS = ["case", "input", "status", "error", "model", "steps", "ensemble", "device", "seconds", "segment", "label", "level", "level_source", "level_posterior",
                   "voxels", "size", "unit", "mean_uncertainty", "max_uncertainty"]


def write_summary(outdir: Path, cases: list[dict], shard: tuple[int, int] | None) -> dict[str, Path]:
    """``summary.json`` (the cases) and ``summary.csv`` (one row per case and segment, with the
    segment's level, what decided it and the level network's posterior where it named it; a
    failed case has one row with its error); ``summary-K-of-N.*`` for a shard."""
    base = "summary" if shard is None else f"summary-{shard[0]}-of-{shard[1]}"
    paths = {"json": outdir / f"{base}.json", "csv": outdir / f"{base}.csv"}
    summary = {
        "verdiff_version": __version__,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "cases": len(cases),
        "succeeded": sum(case["status"] == "ok" for case in cases),
        "failed": sum(case["status"] == "failed" for case in cases),
        "results": cases,
    }
    paths["json"].write_text(json.dumps(summary, indent=2))
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, SUMMARY_COLUMNS)
        writer.writeheader()
        for case in cases:
            common = {key: case.get(key) for key in ("case", "input", "status", "error", "model", "steps", "ensemble", "device", "seconds")}
            for entry in case.get("segments") or [{}]:  # not ``segment``: that is the pipeline's function here
                unit, size = segment_size(entry) if entry else (None, None)
                writer.writerow({**common, "segment": entry.get("name"), "label": entry.get("value"), "level": entry.get("level"), "level_source": entry.get("level_source"),
                                 "level_posterior": entry.get("level_posterior"), "voxels": entry.get("voxels"), "size": size, "unit": unit if entry else None,
                                 "mean_uncertainty": entry.get("mean_uncertainty"), "max_uncertainty": entry.get("max_uncertainty")})
    return paths


def run_batch(inputs: list[Path], outdir: Path, options: dict, printer: ProgressPrinter, shard=None) -> dict:
    """Every input into ``outdir/<case>/`` with one set of loaded networks; a failing input
    is reported and skipped. Returns the summary (also written after each case)."""
    names = case_names(inputs)
    chosen = shard_of(list(zip(inputs, names)), shard)
    if outdir.exists() and not outdir.is_dir():
        raise VerdiffError(f"output {outdir} exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    networks, cases = Networks(), []
    paths = write_summary(outdir, cases, shard)
    for index, (path, name) in enumerate(chosen, 1):
        printer.case(index, len(chosen), name)
        started = time.perf_counter()
        case = {"case": name, "input": str(path.resolve()), "output": str((outdir / name).resolve())}
        try:
            report = run_segment(path, outdir / name, **options, progress=printer, networks=networks, warn=lambda text: printer.message(f"verdiff: warning: {name}: {text}"))
        except VerdiffError as error:
            case.update(status="failed", error=str(error), seconds=round(time.perf_counter() - started, 3))
            printer.message(f"verdiff: error: {name}: {error} (skipped)")
        except Exception as error:  # noqa: BLE001 - a bug on one case must not end a cohort; it is reported in full
            case.update(status="failed", error=f"{type(error).__name__}: {error}", seconds=round(time.perf_counter() - started, 3))
            printer.message(f"verdiff: error: {name}: unexpected {type(error).__name__}: {error} (skipped)")
        else:
            printer.end_line()
            case.update(
                status="ok",
                error=None,
                seconds=report["timings_seconds"]["total"],
                report=report["outputs"]["report"],
                **{key: report[key] for key in ("model", "steps", "ensemble", "device")},
                warnings=report["warnings"],
                segments=report["segments"],
            )
        cases.append(case)
        paths = write_summary(outdir, cases, shard)
    summary = json.loads(paths["json"].read_text())
    summary["files"] = {key: str(path.resolve()) for key, path in paths.items()}
    return summary


def batch_text(summary: dict) -> str:
    out = io.StringIO()
    rows = [(c["case"], c["status"], c.get("model") or "-", f"{c['seconds']:.1f} s", c.get("error") or ", ".join(f"{s['name']} {size_text(s)}" for s in c.get("segments", [])[:3])) for c in summary["results"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("case", "status", "model", "time"))]
    print("  ".join(h.ljust(w) for h, w in zip(("case", "status", "model", "time"), widths)) + "  result", file=out)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[4], file=out)
    print(f"{summary['succeeded']} of {summary['cases']} succeeded, {summary['failed']} failed; summary: {', '.join(summary['files'].values())}", file=out)
    return out.getvalue()


# ----------------------------------------------------------------------------- models


def run_models(args) -> None:
    cards = list_cards()
    if args.json:
        print(json.dumps([card.raw for card in cards], indent=2))
        return
    print(models_table(cards))


def models_table(cards) -> str:
    """One row per card with a header; ``*`` marks the model ``--model auto`` takes for its modality."""
    defaults = set(AUTO_MODALITY.values())
    header = ("model", "family", "dims", "modality", "default", "steps", "ensemble", "labels")
    rows = []
    for card in cards:
        steps_range = card.steps_range()
        low, high = card.ensemble_range()
        rows.append(
            (
                card.name + (" *" if card.name in defaults else ""),
                card.family_name,
                f"{card.spatial_dims}D",
                card.modality,
                f"{card.default_steps} x {card.default_ensemble}" if steps_range else "one pass",
                f"{steps_range[0]}-{steps_range[1]}" if steps_range else "-",
                f"{low}-{high}",
                "; ".join(label["name"] for label in card.labels),
            )
        )
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in [header, *rows]]
    lines.append("* the default for its modality (--model auto); default = sampling steps x ensemble; steps and ensemble: the ranges each model accepts")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- arguments


def ranges_help() -> tuple[str, str]:
    """The --steps and --ensemble help texts, with each bundled card's accepted range."""
    try:
        cards = list_cards()
    except VerdiffError:
        cards = []
    by_range, deterministic = {}, []
    for card in cards:
        try:
            steps_range = card.steps_range()
        except VerdiffError:
            continue
        if steps_range is None:
            deterministic.append(card.name)
        else:
            by_range.setdefault(steps_range, []).append(card.name)
    parts = [f"{low}-{high} for {', '.join(names)}" for (low, high), names in sorted(by_range.items())]
    steps = "sampling steps per sample (default: the model card's); the models accept " + ("; ".join(parts) or "what their card's scheduler allows")
    if deterministic:
        steps += f"; not used by the deterministic {', '.join(deterministic)}"
    ensemble = f"samples averaged, whose spread is the uncertainty, 1-{MAX_ENSEMBLE} (default: the model card's; the deterministic models take 1)"
    return steps, ensemble


class WholeNamesHelpFormatter(argparse.HelpFormatter):
    """argparse's help wrapped at spaces only: model names (``verdiff-xray-wide``) and options
    are never split at their hyphens across lines."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad option (``--steps abc``) is one ``verdiff: error:`` line and exit 2, like every
    other bad input, not argparse's usage block. Sub-commands' parsers are of this class too, so
    they share its help formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", WholeNamesHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"verdiff: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="verdiff", description="Spine segmentation with diffusion models and uncertainty.")
    parser.add_argument("--version", action="version", version=f"verdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser(
        "segment",
        help="segment the spine in one image or a batch",
        description="Segment the spine; writes a label map, an uncertainty volume, a Slicer segmentation and scene, and a JSON report per input.",
    )
    seg.add_argument("input", nargs="+", help="NIfTI, NRRD, MHA, a DICOM series folder, JPG or PNG; several, or a folder of images, make a batch (one subfolder of OUTDIR each)")
    seg.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (a batch: one subfolder per input, and summary.csv/.json)")
    seg.add_argument("--model", default="auto", help="bundled model name (see 'verdiff models'), a modality (MR, CT, XR: its default model), or auto: the default model for the input's modality")
    steps_help, ensemble_help = ranges_help()
    seg.add_argument("--steps", type=int, default=None, metavar="K", help=steps_help)
    seg.add_argument("--ensemble", type=int, default=None, metavar="N", help=ensemble_help)
    seg.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N (GPU number N) or mps (Apple GPU); a device that is absent is an error")
    seg.add_argument("--seed", type=int, default=0, help=f"random seed of the sampling noise, {SEED_LIMITS[0]}-{SEED_LIMITS[1]}: the same seed, settings and device give the same result (default 0)")
    seg.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B", help=f"sagittal slices (3D models: windows) per network call, {BATCH_SIZE_LIMITS[0]}-{BATCH_SIZE_LIMITS[1]}; on a GPU, raised to what fits in memory (default {DEFAULT_BATCH_SIZE})")
    seg.add_argument("--format", dest="output_format", choices=sorted(FORMATS), default="nrrd", help="file format of the label map and the uncertainty (the segmentation stays .seg.nrrd); default nrrd")
    seg.add_argument("--no-scene", dest="scene", action="store_false", help="do not write the .mrb scene bundle (it holds a copy of the input)")
    seg.add_argument("--volumes-only", dest="slicer_files", action="store_false", help="write only the label map, the uncertainty and the JSON report: no .seg.nrrd and no .mrb (the Slicer module's runs; needs no vtk or slicer-core)")
    seg.add_argument("--preview", action="store_true", help="also write S_preview.png: the mid-sagittal slice (or the X-ray) with the outline and the uncertainty")
    seg.add_argument("--shard", type=parse_shard, default=None, metavar="K/N", help="run only the K-th of N interleaved parts of the sorted inputs (array jobs)")
    seg.add_argument("--progress", choices=MODES, default="auto", help="on stderr: bar (a terminal's default), lines (the default when piped), json (one object a line, for programs) or none")
    seg.add_argument("-q", "--quiet", action="store_true", help="print nothing but warnings and errors (same as --progress none, and no summary)")
    seg.add_argument("--json", action="store_true", help="print the JSON report (a batch: the summary) on stdout instead of the text summary")
    models = sub.add_parser("models", help="list the bundled models", description="List the bundled models; * marks the default per modality.")
    models.add_argument("--json", action="store_true", help="print the full model cards")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "segment":
            return segment_command(args)
        run_models(args)
    except VerdiffError as error:
        print(f"verdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verdiff: interrupted", file=sys.stderr)
        return 130
    return 0


def settings_from(args) -> SegmentSettings:
    """The request of ``verdiff segment``'s options (``SegmentSettings.cli_arguments`` writes them)."""
    return SegmentSettings(model=args.model, steps=args.steps, ensemble=args.ensemble, device=args.device, seed=args.seed, batch_size=args.batch_size)


def segment_command(args) -> int:
    settings = settings_from(args)  # a bad option fails here, before any input is read
    printer = ProgressPrinter("none" if args.quiet else args.progress)
    options = dict(settings=settings, output_format=args.output_format, scene=args.scene, preview=args.preview, slicer_files=args.slicer_files)
    single = len(args.input) == 1 and not is_image_folder(Path(args.input[0])) and args.shard is None
    if single:
        try:
            report = run_segment(args.input[0], args.output, **options, progress=printer, warn=lambda text: printer.message(f"verdiff: warning: {text}"))
        finally:
            printer.end_line()
        if args.json:
            print(json.dumps(report, indent=2))
        elif not args.quiet:
            print(human_summary(report), end="")
        return 0
    inputs = expand_inputs(args.input)
    if not inputs:
        raise VerdiffError("no images found in " + ", ".join(map(str, args.input)))
    try:
        summary = run_batch(inputs, Path(args.output), options, printer, args.shard)
    finally:
        printer.end_line()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(batch_text(summary), end="")
    return 2 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
