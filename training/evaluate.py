"""Evaluation through the same ``segment`` path users run: Dice, IoU, 95 % Hausdorff
distance and normalised surface Dice, per case and mean +- sd.

Figures are computed on the input voxel grid (what a user gets), in mm where the image
knows its spacing, in pixels where it does not (JPG/PNG X-rays: the card's "pixel units").
Multi-label models are scored on the union of their labels ("any vertebra") per case and
per label. Validation during training, the export's figures and the ``evaluate``
command all come from ``evaluate`` here.

Decisions: the NSD tolerance defaults to 2.0 (mm, or px without spacing); a case where
exactly one of prediction and truth is empty has an infinite HD95, reported as null and
left out of the HD95 mean (``hd95_undefined`` counts them). Beside the NSD at the chosen
tolerance, ``nsd_1mm`` is the surface Dice at 1 mm (1 px without spacing).

Uncertainty quality (issue 16): ``uncertainty_auroc`` is the AUROC of the uncertainty volume
for separating wrong voxels (label map != truth, binary "any vertebra") from right ones, and
``ece`` the expected calibration error (10 bins) of the mean foreground probability, both
inside the bounding box of truth and prediction grown by ``UNCERTAINTY_MARGIN`` (10) voxels:
the spine and its surroundings, not the far background where any model is trivially right
and sure. The CT recipe's held-out
half is scored with both masks cut to the held-out slices; the cut face is common to
both, which flatters the surface metrics a little.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.metrics import auroc, dice, expected_calibration_error, grown_bounding_box, hd95, iou, nsd
from VerdiffSegmentLib.models import CARD_SCHEMA_VERSION, ModelCard, get_card, parse_card, sha256_of
from VerdiffSegmentLib.pipeline import segment

from .checkpoint import load_weights
from .configs import RECIPES, RunConfig, recipe_config
from .datasets import aasce_subject, evaluation_cases, truth_on_image_grid, volume_items
from .labels import LabelScheme, default_levels
from .level_evaluation import level_figures, summarise_levels

PIXEL_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_NSD_TOLERANCE = 2.0
UNCERTAINTY_MARGIN = 10  # voxels around truth and prediction where uncertainty and calibration are judged


def inference_edge_padding(trained_edge_pad: int | None) -> int:
    """The ``input.edge_padding_px`` of a card whose run padded its crops by up to
    ``trained_edge_pad`` rows (``--edge-pad``; issue 15, session 19): half of it, so the padded
    border the network sees at inference is a typical training one. Decided before any
    held-out measurement: session 18's inference-only padding was best at 16 px and broke at
    24 px, 8 px further, so a margin inside the trained range rather than at its end."""
    return int(trained_edge_pad or 0) // 2


def trained_edge_pad(run_dir: Path) -> int:
    """A run's ``--edge-pad`` from its ``run.json`` (0 for runs without it)."""
    info = Path(run_dir) / "run.json"
    return int(((json.loads(info.read_text()) if info.exists() else {}).get("settings") or {}).get("edge_pad") or 0)


def card_data(run: RunConfig, weights_name: str, sha256: str, steps: int, ensemble: int, version: str = "0.1.0", edge_padding_px: int = 0,
              tiles: tuple[int, str] | None = None) -> dict:
    """A model card for ``run``'s network (the same fields ``export`` writes); ``edge_padding_px``
    from the run's ``--edge-pad`` (``inference_edge_padding``); ``tiles`` (the run's training
    crop and a ``tile_padding``; None: whole slices) samples a 2D run's slices in tiles
    (``input.tile_px``, ``input.tile_padding``: the bundled card's decision, session 27)."""
    recipe = run.recipe_settings
    channels = list(run.channels)
    family = get_family(run.family)
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": run.name,
        "family": run.family,
        "version": version,
        "modality": recipe["modality"],
        "weights": weights_name,
        "sha256": sha256,
        "labels": run.card_labels,
        "network": run.network_arguments,
        "scheduler": dict(family.scheduler_config),
        "input": {"spacing_mm": run.input_spacing_mm, "spacing_note": "pixel units for 2D images without spacing", "normalisation": recipe["normalisation"], "pad_multiple": 2 ** (len(channels) - 1)},
        "defaults": {"steps": steps, "ensemble": ensemble},
        "training": {"label_scheme": run.labels.to_dict()},  # the levels the per-vertebra step names (export adds the rest)
    }
    if run.labels.gaps:  # the network's extra output (``VerdiffSegmentLib.models``: gap channel)
        card["separation"] = {"gap_channel": run.labels.num_classes, "what": "gaps between neighbouring vertebrae (training.labels.neighbour_gaps); not a segment"}
    if run.context_slices:  # absent for 1-channel cards: they stay as they were written
        card["input"]["context_slices"] = run.context_slices
    if run.context_distance_mm is not None:  # absent: the grid spacing, as every card written before it
        card["input"]["context_distance_mm"] = run.context_distance_mm
    if run.view != "sagittal":  # absent: sagittal, as every card written before it
        card["input"]["view"] = run.view
    if edge_padding_px:  # absent when 0: the cards written before it stay as they were
        card["input"]["edge_padding_px"] = int(edge_padding_px)
    if tiles and run.spatial_dims == 2:  # absent: whole slices, as every card written before it
        card["input"].update(tile_px=int(tiles[0]), tile_padding=tiles[1])
    if run.spatial_dims == 3:
        card["input"]["spacing_note"] = "isotropic: the slices are resampled to spacing_mm too; volumes only"
        card["input"]["patch_size"] = list(run.patch_size)
    if family.scheduler is None:  # deterministic: no sampling settings to record
        del card["scheduler"]
        card["defaults"] = {"steps": family.default_steps, "ensemble": family.default_ensemble}
    return card


def run_config_of_card(card: ModelCard) -> RunConfig:
    """The config a card was trained with: stored in new cards, else its bundled recipe."""
    stored = card.training_config
    if stored:
        return RunConfig.from_dict(stored, str(card.path))
    if card.name in RECIPES:
        return recipe_config(card.name, channels=card.channels)
    raise ValueError(f"card {card.path} names no training config and is not a bundled recipe")


def image_units(image: sitk.Image, path: Path | None) -> tuple[str, np.ndarray]:
    """("mm" or "px", spacing in numpy axis order)."""
    spacing = np.array(image.GetSpacing()[::-1], float)
    if path is not None and Path(path).suffix.lower() in PIXEL_FORMATS:
        return "px", np.ones_like(spacing)
    return "mm", spacing


def score(prediction: np.ndarray, truth: np.ndarray, spacing, tolerance: float) -> dict:
    """Dice, IoU, HD95 and NSD of two boolean masks."""
    distance = hd95(prediction, truth, spacing)
    return {
        "dice": round(dice(prediction, truth), 4),
        "iou": round(iou(prediction, truth), 4),
        "hd95": round(distance, 3) if math.isfinite(distance) else None,
        "nsd": round(nsd(prediction, truth, tolerance, spacing), 4),
        "nsd_1mm": round(nsd(prediction, truth, 1.0, spacing), 4),
    }


def score_case(name: str, labels: np.ndarray, truth: np.ndarray, spacing, tolerance: float, label_info: list[dict], selector=None) -> dict:
    if selector is not None:
        labels, truth = np.where(selector, labels, 0), np.where(selector, truth, 0)
    row = {"case": name, **score(labels > 0, truth > 0, spacing, tolerance)}
    if len(label_info) > 1:
        row["labels"] = {info["name"]: score(labels == info["value"], truth == info["value"], spacing, tolerance) for info in label_info}
    return row


def uncertainty_by_correctness(labels: np.ndarray, truth: np.ndarray, uncertainty: np.ndarray, selector=None) -> dict:
    """Mean uncertainty on the voxels the label map gets right and on those it gets wrong,
    counted within the union of prediction and truth (the far background is right with zero
    spread and would swamp the mean). Honest uncertainty is higher where the model is wrong."""
    region = (labels > 0) | (truth > 0)
    if selector is not None:
        region &= selector
    wrong = region & ((labels > 0) != (truth > 0))
    right = region & ~wrong
    mean = lambda mask: round(float(uncertainty[mask].mean()), 5) if mask.any() else None  # noqa: E731
    return {"uncertainty_correct": mean(right), "uncertainty_wrong": mean(wrong)}


def uncertainty_quality(labels: np.ndarray, truth: np.ndarray, uncertainty: np.ndarray, probability: np.ndarray | None, selector=None) -> dict:
    """AUROC of the uncertainty for wrong voxels and ECE of the foreground probability, in the
    grown box around truth and prediction (module docstring); None where undefined."""
    prediction, truth = labels > 0, truth > 0
    if selector is not None:
        prediction, truth = prediction & selector, truth & selector
    box = grown_bounding_box(prediction | truth, UNCERTAINTY_MARGIN)
    if box is None:
        return {"uncertainty_auroc": None, "ece": None}
    wrong = prediction[box] != truth[box]
    area = auroc(uncertainty[box], wrong)
    ece = expected_calibration_error(probability[box], truth[box]) if probability is not None else None
    return {"uncertainty_auroc": None if area is None else round(area, 4), "ece": None if ece is None else round(ece, 4)}


def _mean_sd(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return round(statistics.mean(values), 4), round(statistics.pstdev(values), 4)


def summarise(rows: list[dict]) -> dict:
    """Mean +- sd of each metric over the rows (population sd)."""
    out = {}
    for key in ("dice", "iou", "hd95", "nsd", "nsd_1mm", "uncertainty_correct", "uncertainty_wrong", "uncertainty_auroc", "ece"):
        out[f"{key}_mean"], out[f"{key}_sd"] = _mean_sd(r.get(key) for r in rows)
    out["hd95_undefined"] = sum(r["hd95"] is None for r in rows)
    return out


def evaluate(card: ModelCard, cases, steps=None, ensemble=None, seed: int = 0, network=None, tolerance: float = DEFAULT_NSD_TOLERANCE, device: str = "auto") -> dict:
    """Segment each case of ``cases`` (name, image, truth, selectors, path) with ``card`` and score it.

    Rows whose name says "trained on" (the CT recipe's whole volume) are reported but left
    out of the means; where every row was trained on (the CT model trained on both CTs) the
    means are over them and ``trained_on_only`` says so."""
    rows, seconds, units = [], [], set()
    for name, image, truth, selectors, path in cases:
        start = time.perf_counter()
        segmentation = segment(image, card, steps, ensemble, device, seed, network=network, keep_probability=True)
        seconds.append(time.perf_counter() - start)
        labels = sitk.GetArrayFromImage(segmentation.labels)
        uncertainty = sitk.GetArrayFromImage(segmentation.uncertainty).reshape(labels.shape)
        probability = sitk.GetArrayFromImage(segmentation.probability).reshape(labels.shape)
        unit, spacing = image_units(image, path)
        units.add(unit)
        for report_name, selector in selectors.items():
            row = score_case(report_name, labels, truth, spacing, tolerance, card.labels, selector)
            reliability = {k: v for k, v in segmentation.settings["reliability"].items() if k != "warnings"}
            rows.append({**row, **uncertainty_by_correctness(labels, truth, uncertainty, selector), **uncertainty_quality(labels, truth, uncertainty, probability, selector),
                         **level_figures(segmentation, path), "reliability": reliability})
    held_out = [r for r in rows if "trained on" not in r["case"]]
    trained_on_only = bool(rows) and not held_out
    if trained_on_only:
        held_out = rows
    result = {"cases": rows, **summarise(held_out), **summarise_levels(held_out), **({"trained_on_only": True} if trained_on_only else {})}
    if len(card.labels) > 1:
        result["labels"] = {info["name"]: summarise([r["labels"][info["name"]] for r in held_out]) for info in card.labels}
    result.update(
        {
            "units": "/".join(sorted(units)),
            "nsd_tolerance": tolerance,
            "seconds_per_case": round(statistics.mean(seconds), 2) if seconds else None,
        }
    )
    return result


def evaluate_suites(card: ModelCard, suites, data_root: Path, scheme, limit: int | None = None, steps=None, ensemble=None, seed: int = 0, network=None, tolerance: float = DEFAULT_NSD_TOLERANCE) -> dict:
    """Each cross-source suite's figures (``cross_source``), the one path of ``evaluate --suite``
    and ``export --suites``. A planar suite of a 2.5D card is segmented by the card's
    ``planar_model`` (``cross_source.suite_card``), named in that suite's ``model``."""
    from .cross_source import suite_card, suite_cases

    figures = {}
    for suite in suites:
        chosen = suite_card(card, suite)
        figures[suite] = evaluate(chosen, suite_cases(suite, data_root, scheme, limit), steps, ensemble, seed, network=network if chosen is card else None, tolerance=tolerance)
        if chosen is not card:
            figures[suite]["model"] = chosen.name
    return figures


def run_config_of_run(run_dir: Path, model: str | None = None) -> RunConfig:
    """The run's config (``run.json``); runs from before it existed are their bundled recipe."""
    path = Path(run_dir) / "run.json"
    if path.exists():
        run = RunConfig.from_dict(json.loads(path.read_text())["config"], str(path))
        if model and model != run.name:
            raise ValueError(f"{run_dir} trained model {run.name!r}, not {model!r}")
        return run
    if model not in RECIPES:
        raise ValueError(f"{run_dir} has no run.json; name its bundled recipe ({', '.join(RECIPES)})")
    return recipe_config(model)


def run_weights(run_dir: Path) -> Path:
    best = Path(run_dir) / "best.pt"
    return best if best.exists() else Path(run_dir) / "model.pt"


def run_card(run: RunConfig, run_dir: Path, steps: int, ensemble: int) -> tuple[ModelCard, torch.nn.Module]:
    """An in-memory card and the network of a run's weights (for evaluating a run before export)."""
    weights = run_weights(run_dir)
    padding = inference_edge_padding(trained_edge_pad(run_dir))
    card = parse_card(card_data(run, weights.name, sha256_of(weights), steps, ensemble, edge_padding_px=padding), Path(run_dir) / f"{run.name}.json")
    network = card.family.network(**card.network_config)
    network.load_state_dict(load_weights(weights))
    return card, network.eval()


def unseen_patient_figures(result: dict, run: RunConfig, split: dict) -> dict:
    """The X-ray recipe splits AASCE by image, so some held-out images show a patient seen in
    training (``configs`` docstring); report the held-out images of unseen patients apart.
    Other runs split by subject and need nothing here."""
    if run.datasets or run.recipe != "verdiff-xray":
        return {}
    trained = {aasce_subject(name) for name in split["train"]}
    unseen = [row["dice"] for row in result["cases"] if aasce_subject(row["case"]) not in trained]
    mean, sd = _mean_sd(unseen)
    return {"unseen_patients": len(unseen), "dice_mean_unseen_patients": mean, "dice_sd_unseen_patients": sd}


def split_cases(run: RunConfig, data_root: Path, split: dict, which: str = "validation", limit: int | None = None):
    """The cases of a split, as ``evaluate`` takes them."""
    return evaluation_cases(run, data_root, split, which, limit)


def folder_cases(images: str, labels: str, source: str, scheme: LabelScheme, data_root: Path, limit: int | None = None):
    """Cases of a folder: image/label pairs matched by one ``*`` (as in a config's data set)."""
    for item in volume_items(images, labels, source, data_root)[:limit]:
        image, truth = truth_on_image_grid(item, scheme)
        yield item.name, image, truth, {item.name: None}, item.image


def run_evaluate(args) -> dict:
    """The ``evaluate`` command: a bundled/exported card (``MODEL``) or a run's weights (``--run``),
    on a split of its data or on a folder."""
    if args.run:
        run = run_config_of_run(args.run, args.model)
        card, network = run_card(run, args.run, args.steps or 5, args.ensemble or 3)
        split_path = Path(args.run) / "split.json"
        split = json.loads(split_path.read_text())
    else:
        card = get_card(args.model, args.models_dir)
        run, network = run_config_of_card(card), None
        split = card.split or None
    if getattr(args, "suite", None):
        from .cross_source import SUITES

        suites = SUITES if args.suite == "all" else args.suite.split(",")
        result = {"model": card.name, "suites": evaluate_suites(card, suites, args.data, run.labels, args.limit, args.steps, args.ensemble, args.seed, network, args.tolerance)}
        result["dice_by_suite"] = {suite: r["dice_mean"] for suite, r in result["suites"].items()}
        return result
    if args.images:
        scheme = LabelScheme(run.labels.scheme, tuple(run.labels.levels if run.labels.scheme == "levels" else default_levels([args.source])))
        cases = folder_cases(args.images, args.labels, args.source, scheme, args.data, args.limit)
        where = f"folder {args.images}"
    else:
        if not split or not split.get(args.split):
            raise ValueError(f"no {args.split} subjects recorded for {card.name}")
        cases = split_cases(run, args.data, split, args.split, args.limit)
        where = f"{args.split} split"
    result = evaluate(card, cases, args.steps, args.ensemble, args.seed, network=network, tolerance=args.tolerance)
    if not args.images and args.split == "validation":
        result.update(unseen_patient_figures(result, run, split))
    result["model"], result["evaluated_on"] = card.name, where
    return result
