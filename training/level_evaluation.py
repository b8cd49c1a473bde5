"""Per-level figures for ``evaluate``: per-level Dice, the share of vertebrae named with
the right level and, for AASCE X-rays, the Cobb angles and their SMAPE.

The truth levels come from the data set an evaluation case's image belongs to, found from
the image path (the recipes' data: AASCE landmarks, MR ``*_seg``, the CT masks); a case
from elsewhere gets no level figures. The metrics themselves are
``VerdiffSegmentLib.levels.level_scores`` and ``VerdiffSegmentLib.cobb.smape``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VerdiffSegmentLib import cobb, levels

from .datasets import CT_ABDOMEN, CT_CHEST, MR_FOLDER, Item, aasce_subject, ct_abdomen_item, ct_chest_item, mr_item, truth_on_image_grid
from .labels import LabelScheme, source_levels


def recipe_item(path: str | Path | None) -> Item | None:
    """The labelled item of the development data whose image is ``path``, or None."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() == ".jpg" and path.parent.name == "training" and path.parents[1].name == "data":
        root = path.parents[2]
        name = path.name[: -len(path.suffix)]
        return Item(name, aasce_subject(name), "aasce", path, root / "labels" / "training" / f"{path.name}.mat", "aasce")
    if path.parent.name == MR_FOLDER and path.name.endswith("_img.nii.gz"):
        return mr_item(path.parents[1], path.name.removesuffix("_img.nii.gz"))
    for item_of, folder in ((ct_chest_item, CT_CHEST), (ct_abdomen_item, CT_ABDOMEN)):
        if path.parent.name == folder and item_of(path.parents[1]).image.name == path.name:
            return item_of(path.parents[1])
    return None


@functools.lru_cache(maxsize=4)
def _aasce_angles(labels_folder: Path) -> dict[str, list[float]]:
    names = [line.strip() for line in (labels_folder / "filenames.csv").read_text().splitlines() if line.strip()]
    angles = np.loadtxt(labels_folder / "angles.csv", delimiter=",")
    return {name: [float(a) for a in row] for name, row in zip(names, angles)}


def level_figures(result, path) -> dict:
    """Level figures of one segmentation result (``pipeline.SegmentationResult``) of the
    image at ``path``: ``{"levels": level_scores, "cobb_angles_deg", "cobb_truth_deg"}``,
    or {} when the truth levels are unknown."""
    item = recipe_item(path)
    if item is None or not item.labels.is_file():
        return {}
    scheme = LabelScheme("levels", tuple(level for level in source_levels(item.source) if level != "sacrum"))
    _, truth = truth_on_image_grid(item, scheme)
    predicted = sitk.GetArrayFromImage(result.labels).reshape(truth.shape)
    truth_levels = {k + 1: level for k, level in enumerate(scheme.levels)}
    scores = levels.level_scores(predicted, {s["value"]: s.get("level") for s in result.segments}, truth, truth_levels)
    figures = {"levels": scores}
    if item.kind == "aasce":
        figures["cobb_angles_deg"] = result.measurements.get("cobb_angles_deg")
        figures["cobb_truth_deg"] = _aasce_angles(item.labels.parent).get(item.image.name)
    return figures


def summarise_levels(rows: list[dict]) -> dict:
    """Over the rows with level figures: mean per-level Dice (per case, then over cases),
    the pooled share of correctly named vertebrae, and the Cobb SMAPE (%) where known."""
    scored = [row for row in rows if "levels" in row]
    if not scored:
        return {}
    out = {
        "level_dice_mean": round(float(np.mean([row["levels"]["level_dice_mean"] for row in scored])), 4),
        "correctly_named_share": round(sum(row["levels"]["correctly_named"] for row in scored) / max(sum(row["levels"]["vertebrae"] for row in scored), 1), 4),
    }
    with_angles = [row for row in scored if row.get("cobb_truth_deg") is not None]
    if with_angles:
        out["cobb_smape_percent"] = cobb.smape([row["cobb_angles_deg"] for row in with_angles], [row["cobb_truth_deg"] for row in with_angles])
    return out
