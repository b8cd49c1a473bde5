"""Validation of a trained model through the same ``segment`` path users run, and export
of the weights with their model card into ``Resources/Models``.

Figures are binary Dice and IoU of the label map against the held-out subjects' labels,
on the input voxel grid (what a user gets), with the card's default steps and ensemble.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.metrics import dice, iou
from VerdiffSegmentLib.models import ModelCard, sha256_of
from VerdiffSegmentLib.pipeline import segment

from . import datasets
from .configs import MR_VALIDATION, RECIPES
from .train import ct_validation_start


def validation_cases(model_name: str, data_root: Path, split: dict):
    """(name, image, truth mask as numpy bool on the image grid, {report name: voxel selector or None})."""
    if model_name == "verdiff-mr":
        folder = data_root / "mr-lumbar-vb3"
        for subject in MR_VALIDATION:
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{subject}_seg.nii.gz"))) > 0
            yield subject, read_image(folder / f"{subject}_img.nii.gz"), truth, {subject: None}
    elif model_name == "verdiff-xray":
        items = {name: (p, m) for name, p, m in datasets.aasce_cases(data_root / "xray-aasce")}
        for name in split["validation"]:
            image = read_image(items[name][0])
            yield name, image, sitk.GetArrayFromImage(datasets.aasce_mask(image, items[name][1])) > 0, {name: None}
    elif model_name == "verdiff-ct":
        image = read_image(data_root / "ct-chest/cxr_ct_int16.nii.gz")
        truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(data_root / "ct-chest/mask.nii.gz"))), range(29, 47))
        held_out = ct_held_out_selector(image, data_root)
        yield "ct-chest", image, truth, {"ct-chest (held-out half)": held_out, "ct-chest (whole, half trained on)": None}
    else:
        raise KeyError(model_name)


def ct_held_out_selector(image: sitk.Image, data_root: Path) -> np.ndarray:
    """Boolean array on the chest CT grid: the voxels of the held-out sagittal slices."""
    from VerdiffSegmentLib.inferers.sagittal import from_sagittal_stack, sagittal_reference

    recipe = RECIPES["verdiff-ct"]
    case = datasets.load_volume_case(data_root / "ct-chest/cxr_ct_int16.nii.gz", data_root / "ct-chest/mask.nii.gz", range(29, 47), recipe["spacing_mm"], recipe["normalisation"])
    start = ct_validation_start(case.masks)
    reference = sagittal_reference(image, recipe["spacing_mm"])
    held = np.zeros(case.masks.shape, np.uint8)
    held[start:] = 1
    return sitk.GetArrayFromImage(from_sagittal_stack(held, reference, image, is_label=True)) > 0


def evaluate(card: ModelCard, data_root: Path, split: dict, steps=None, ensemble=None, seed: int = 0, network=None) -> dict:
    per_case, seconds = [], []
    for _, image, truth, selectors in validation_cases(card.name, data_root, split):
        start = time.perf_counter()
        labels = sitk.GetArrayFromImage(segment(image, card, steps, ensemble, "auto", seed, network=network).labels) > 0
        seconds.append(time.perf_counter() - start)
        for name, selector in selectors.items():
            pred, true = (labels, truth) if selector is None else (labels[selector], truth[selector])
            per_case.append({"case": name, "dice": round(dice(pred, true), 4), "iou": round(iou(pred, true), 4)})
    # The CT's "whole" figure includes slices trained on; the mean uses held-out figures only.
    dices = [c["dice"] for c in per_case if "trained on" not in c["case"]]
    extra = {}
    if card.name == "verdiff-xray":
        # AASCE names hold a patient id before the first space ("...-205 A AP", "...-205 B AP"):
        # the image split can put one patient on both sides, so also report unseen patients only.
        trained_patients = {name.split(" ")[0] for name in split["train"]}
        unseen = [c["dice"] for c in per_case if c["case"].split(" ")[0] not in trained_patients]
        extra = {"unseen_patients": len(unseen), "dice_mean_unseen_patients": round(statistics.mean(unseen), 4) if unseen else None,
                 "dice_sd_unseen_patients": round(statistics.pstdev(unseen), 4) if unseen else None}
    return {
        **extra,
        "cases": per_case,
        "dice_mean": round(statistics.mean(dices), 4),
        "dice_sd": round(statistics.pstdev(dices), 4),
        "iou_mean": round(statistics.mean(c["iou"] for c in per_case if "trained on" not in c["case"]), 4),
        "seconds_per_case": round(statistics.mean(seconds), 2),
    }


def training_command(run_dir: Path) -> str | None:
    """The run's command; a run started ``--init`` from another run's weights is preceded by that
    run's command, so the card holds the whole recipe from random weights."""
    path = run_dir / "command.txt"
    if not path.exists():
        return None
    command = path.read_text().strip()
    words = command.split()
    if "--init" in words:
        earlier = Path(words[words.index("--init") + 1]).parent
        earlier = earlier if earlier.is_absolute() else run_dir.parent.parent / earlier
        return f"{training_command(earlier)} && {command}"
    return command


def export(model_name: str, run_dir: Path, models_dir: Path, data_root: Path, steps: int, ensemble: int, channels, version="0.1.0") -> dict:
    """Copy ``run_dir/model.pt`` into ``models_dir`` with its card, then validate through the card."""
    recipe = RECIPES[model_name]
    weights = models_dir / f"{model_name}.pt"
    shutil.copyfile(run_dir / "model.pt", weights)
    split = json.loads((run_dir / "split.json").read_text())
    card = {
        "name": model_name,
        "family": "verdiff-net",
        "version": version,
        "modality": recipe["modality"],
        "weights": weights.name,
        "sha256": sha256_of(weights),
        "labels": recipe["labels"],
        "network": {"in_channels": 1, "num_classes": 1, "channels": list(channels), "time_dim": 64},
        "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "linear"},
        "input": {"spacing_mm": recipe["spacing_mm"], "spacing_note": "pixel units for 2D images without spacing", "normalisation": recipe["normalisation"], "pad_multiple": 2 ** (len(channels) - 1)},
        "defaults": {"steps": steps, "ensemble": ensemble},
        "training": {
            "data": recipe["data"],
            "split": split,
            "command": training_command(run_dir),
        },
        "licence": "Weights derived from the training data named above; follow its licence and cite its authors.",
    }
    path = models_dir / f"{model_name}.json"
    path.write_text(json.dumps(card, indent=2))
    card["validation"] = evaluate(ModelCard(path, card), data_root, split, steps, ensemble)
    card["validation"]["settings"] = {"steps": steps, "ensemble": ensemble, "seed": 0}
    path.write_text(json.dumps(card, indent=2))
    return card
