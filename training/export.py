"""Export of a run's weights with their model card into ``Resources/Models``.

The weights exported are the run's best by validation Dice (``best.pt``) when it
validated during training, else its final ``model.pt``. The card records the data, the
split, the label scheme, the exact training command and configuration, the sha256 of the
weights, and validation figures computed through the card itself (the same ``segment``
path users run, loading the file users load).

fp16: half-precision weights halve the file; they are shipped when their validation Dice
is not lower than the fp32 weights' by more than ``tolerance`` (0.001, the card's last
digit); otherwise fp32 is kept. Both figures are written to the card under ``export``.
``models.load_network`` casts fp16 weights to float32 on load, so inference is unchanged.

Training that accumulates (issue 16): a run started ``--init`` from a bundled model's weights
continues that model. The card's ``training.history`` lists every stage from random weights
(command, optimiser steps, wall seconds, device and threads, where it started from) and
``training.cumulative`` sums them: optimiser steps, wall hours and CPU core-hours (wall
hours x threads on a CPU; GPU hours on CUDA). A stage's history comes from the card
beside its ``--init`` weights, so chaining sessions keeps the whole record.

A card replaced by a new export keeps its ``postprocess`` section (slice averaging, the spine's
chain, uncertainty smoothing), its ``naming`` section (where extra vertebrae lie, the level
networks), its ``cobb`` section (the endplate-tilt network of the X-ray cards) and how it reads
pictures (``input.radiograph`` of the X-ray cards, ``input.picture_field_of_view_mm`` of the 2D
MR cards; before session 26 an export dropped these three, and with them the Cobb tilts and
the DICOM radiographs' pixel size): they are decisions about using the output, measured apart
from the weights (docs/experiments.md, docs/levels.md), and the new weights are validated
through them. Its
``reliability`` threshold is not carried: it was calibrated on the old weights' outputs, and
``benchmarks/warning_rates.py`` calibrates it again.

A card that samples its slices in tiles (``input.tile_px``, session 27) keeps tiling, at the new
run's training crop: the tile is the size the network learned on, so it belongs to the run,
while sampling in tiles at all is the bundle's decision, measured apart from the weights.

A run trained with ``--edge-pad N`` gets ``input.edge_padding_px`` on its card
(``evaluate.inference_edge_padding``), as its validation during training had; a run trained
without it keeps the replaced card's edge padding (the bundled verdiff-mr pads the top of its
slices, a decision about using the model measured apart from its weights, as ``postprocess``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.models import ModelCard, parse_card, read_card, sha256_of

from .checkpoint import atomic_save, load_checkpoint, load_weights
from .configs import RunConfig
from .evaluate import card_data, evaluate, evaluate_suites, inference_edge_padding, trained_edge_pad, run_config_of_card, run_config_of_run, run_weights, split_cases, unseen_patient_figures

FP16_TOLERANCE = 0.001


def training_command(run_dir: Path) -> str | None:
    """The run's command; a run started ``--init`` from another run's weights is preceded by that
    run's command (from a bundled model's weights: its card's command), so the card holds the
    whole recipe from random weights."""
    path = Path(run_dir) / "command.txt"
    if not path.exists():
        return None
    command = path.read_text().strip()
    words = command.split()
    if "--init" in words:
        init = Path(words[words.index("--init") + 1])
        init = init if init.is_absolute() else Path(run_dir).parent.parent / init
        card = init.with_suffix(".json")  # a bundled model's weights: its card holds the recipe so far
        earlier = read_card(card).training.get("command") if card.exists() else training_command(init.parent)
        return f"{earlier} && {command}" if earlier else command
    return command


def training_history(run_dir: Path, run_info: dict) -> list[dict]:
    """The stages that made a run's weights: those recorded beside its ``--init`` weights (a
    bundled card's ``training.history``), then this run (module docstring)."""
    settings = run_info.get("settings") or {}
    earlier: list[dict] = []
    init = settings.get("init")
    if init:
        card_path, init_run = Path(init).with_suffix(".json"), Path(init).parent
        if card_path.exists():
            earlier = list(read_card(card_path).training.get("history", []))
        elif (init_run / "run.json").exists() and init_run.resolve() != Path(run_dir).resolve():
            earlier = training_history(init_run, json.loads((init_run / "run.json").read_text()))
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if not summary and (Path(run_dir) / "checkpoint.pt").exists():
        # a stage ended by a kill: its weights were taken from its last checkpoint
        summary = load_checkpoint(Path(run_dir) / "checkpoint.pt")["progress"]
    command_path = Path(run_dir) / "command.txt"
    command = command_path.read_text().strip() if command_path.exists() else None
    words = (command or "").split()
    threads = settings.get("threads") or (int(words[words.index("--threads") + 1]) if "--threads" in words[:-1] else None)
    stage = {
        "command": command,
        "optimiser_steps": summary.get("step"),
        "wall_seconds": summary.get("seconds"),
        "device": settings.get("device"),
        "threads": threads,
        "world_size": settings.get("world_size", 1),
        "augmentation": settings.get("augmentation"),
        "init": init,
    }
    return earlier + [stage]


def cumulative_training(history: list[dict]) -> dict:
    """Sums over the stages: optimiser steps, wall hours, CPU core-hours (CPU stages) and GPU hours."""
    steps = sum(stage.get("optimiser_steps") or 0 for stage in history)
    hours = [(stage.get("wall_seconds") or 0) / 3600 for stage in history]
    on_gpu = [stage.get("device") == "cuda" for stage in history]
    cpu = sum(h * max(stage.get("threads") or 1, 1) * max(stage.get("world_size") or 1, 1) for h, stage, gpu in zip(hours, history, on_gpu) if not gpu)
    gpu = sum(h * max(stage.get("world_size") or 1, 1) for h, stage, gpu in zip(hours, history, on_gpu) if gpu)
    return {"optimiser_steps": steps, "wall_hours": round(sum(hours), 5), "cpu_core_hours": round(cpu, 5), "gpu_hours": round(gpu, 5), "stages": len(history)}


CARRIED_SECTIONS = ("postprocess", "naming", "cobb")
CARRIED_INPUT_KEYS = ("edge_padding_px", "edge_padding_sides")  # how the slices are padded (models, edge padding)
CARRIED_PICTURE_KEYS = ("radiograph", "picture_field_of_view_mm")  # how a picture's pixels are read (radiograph, preparation decision 5)


def carried_settings(card_path: Path) -> dict:
    """The sections of the card an export replaces that the new card keeps (module docstring),
    and its ``input.planar_model`` (which model segments single slices for a 2.5D card: a
    choice of the bundle, not of the weights) under the key ``planar_model``, its edge
    padding (``input.edge_padding_px`` and ``edge_padding_sides``) under ``edge_padding``, and
    how it reads pictures (``input.radiograph``, ``input.picture_field_of_view_mm``) under
    ``picture_reading``, and whether it samples in tiles (``input.tile_px``) under ``tiles`` (with
    its ``input.tile_padding``)."""
    if not card_path.exists():
        return {}
    old = json.loads(card_path.read_text(encoding="utf-8"))
    carried = {key: old[key] for key in CARRIED_SECTIONS if key in old}
    if (old.get("input") or {}).get("planar_model"):
        carried["planar_model"] = old["input"]["planar_model"]
    if (old.get("input") or {}).get("edge_padding_px"):
        carried["edge_padding"] = {k: old["input"][k] for k in CARRIED_INPUT_KEYS if k in old["input"]}
    if any(k in (old.get("input") or {}) for k in CARRIED_PICTURE_KEYS):
        carried["picture_reading"] = {k: old["input"][k] for k in CARRIED_PICTURE_KEYS if k in old["input"]}
    if (old.get("input") or {}).get("tile_px"):
        carried["tiles"] = {"tile_padding": old["input"].get("tile_padding", "none")}
    return carried


def export(model_name: str, run_dir: Path, models_dir: Path, data_root: Path, steps: int | None = None, ensemble: int | None = None,
           precision: str = "auto", tolerance: float = FP16_TOLERANCE, version: str = "0.1.0", start_timestep: int | None = None,
           suites: list[str] | None = None) -> dict:
    """Write ``NAME.pt`` and ``NAME.json`` into ``models_dir``; returns the card.
    ``start_timestep``: prior-shifted families sample from this timestep by default (the card's
    ``scheduler.start_timestep``). ``suites``: also validate on these cross-source suites
    (``cross_source``) and record their figures under ``validation_suites``."""
    run_dir, models_dir = Path(run_dir), Path(models_dir)
    run = run_config_of_run(run_dir, model_name)
    family = get_family(run.family)
    steps = family.default_steps if steps is None else steps
    ensemble = family.default_ensemble if ensemble is None else ensemble
    source = run_weights(run_dir)
    state = load_weights(source)
    split = json.loads((run_dir / "split.json").read_text())
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").exists() else None
    command = training_command(run_dir)
    history = training_history(run_dir, run_info)
    weights = models_dir / f"{run.name}.pt"
    path = models_dir / f"{run.name}.json"
    carried = carried_settings(path)
    crop = (run_info.get("settings") or {}).get("crop")
    tiles = (int(crop), carried["tiles"]["tile_padding"]) if carried.get("tiles") and crop else None  # tiles of the new run's crop

    def write(dtype: torch.dtype) -> dict:
        """Save the weights in ``dtype`` and their card; returns the card (no figures yet)."""
        atomic_save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, weights)
        card = card_data(run, weights.name, sha256_of(weights), steps, ensemble, version, inference_edge_padding(trained_edge_pad(run_dir)), tiles)
        if start_timestep is not None and "scheduler" in card:
            card["scheduler"]["start_timestep"] = start_timestep
        card["training"] = {
            "data": run.recipe_settings["data"] if not run.datasets else "; ".join(d.get("images") or d.get("root") for d in run.datasets),
            "split": split,
            "command": command,
            "config": run.to_dict(),
            "label_scheme": run.labels.to_dict(),
            "settings": run_info.get("settings"),
            "weights_from": source.name + (f" (step {best['step']}, validation Dice {best['dice']})" if best and source.name == "best.pt" else ""),
            "history": history,
            "cumulative": cumulative_training(history),
        }
        card.update({key: value for key, value in carried.items() if key not in ("planar_model", "edge_padding", "picture_reading", "tiles")})
        if carried.get("edge_padding") and "edge_padding_px" not in card["input"]:  # a run trained padded sets its own
            card["input"].update(carried["edge_padding"])
        card["input"].update(carried.get("picture_reading", {}))
        if carried.get("planar_model") and card["input"].get("context_slices"):
            card["input"]["planar_model"] = carried["planar_model"]
        card["licence"] = "Weights derived from the training data named above; follow its licence and cite its authors."
        path.write_text(json.dumps(card, indent=2))
        return card

    def validate(card: dict) -> dict:
        """Figures through the card on disk: the weights file users load, the path they run."""
        figures = evaluate(parse_card(card, path), split_cases(run, data_root, split), steps, ensemble, seed=0)
        figures.update(unseen_patient_figures(figures, run, split))
        figures["settings"] = {"steps": steps, "ensemble": ensemble, "seed": 0, **({"start_timestep": start_timestep} if start_timestep is not None else {})}
        return figures

    card = write(torch.float32)
    card["validation"] = validate(card)
    card["export"] = {"precision": "fp32"}
    if precision in ("auto", "fp16"):
        half = write(torch.float16)
        half["validation"] = validate(half)
        fp32_dice, fp16_dice = card["validation"]["dice_mean"], half["validation"]["dice_mean"]
        keep_half = precision == "fp16" or fp16_dice >= fp32_dice - tolerance
        if keep_half:
            card = half
        else:
            validation = card["validation"]
            card = write(torch.float32)  # the same fp32 tensors as validated above
            card["validation"] = validation
        card["export"] = {"precision": "fp16" if keep_half else "fp32", "fp32_dice_mean": fp32_dice, "fp16_dice_mean": fp16_dice, "tolerance": tolerance}
    if suites:
        figures = suite_figures(parse_card(card, path), run, data_root, suites)
        (run_dir / "suites.json").write_text(json.dumps(figures, indent=1))  # with every case's row, beside the run
        card["validation_suites"] = {suite: {k: v for k, v in f.items() if k != "cases"} | {"cases": len(f["cases"])} for suite, f in figures.items()}
    path.write_text(json.dumps(card, indent=2))
    return card


def suite_figures(card: ModelCard, run: RunConfig, data_root: Path, suites: list[str]) -> dict:
    """Each cross-source suite's figures at the card's defaults."""
    return evaluate_suites(card, suites, data_root, run.labels, seed=0)


def set_defaults(model_name: str, models_dir: Path, data_root: Path, steps: int, ensemble: int, start_timestep: int | None = None) -> dict:
    """Change a bundled model's default sampling settings (and, for prior-shifted families, where
    sampling starts) and re-validate it on the split its card records, through the card on
    disk. The weights are untouched; the figures of the settings it replaces are kept in
    ``validation_history`` so a card shows what each choice cost or gained."""
    path = Path(models_dir) / f"{model_name}.json"
    card = read_card(path).raw  # the JSON this function edits and writes back, checked on the way in
    if card["family"] == "unet":
        raise ValueError(f"{model_name} is deterministic: it has no sampling settings")
    previous = card.get("validation", {})
    history = card.get("validation_history", [])
    if previous:
        keep = ("dice_mean", "dice_sd", "iou_mean", "hd95_mean", "nsd_mean", "dice_mean_unseen_patients", "settings")
        history.append({k: previous[k] for k in keep if k in previous} | {"scheduler": dict(card.get("scheduler", {}))})
    card["defaults"] = {"steps": steps, "ensemble": ensemble}
    if start_timestep is not None:
        card["scheduler"] = {**card.get("scheduler", {}), "start_timestep": start_timestep}
    model = parse_card(card, path)
    model.family.scheduler(**card["scheduler"]).set_timesteps(steps)  # refuse impossible settings before any work
    run = run_config_of_card(model)
    split = card["training"]["split"]
    figures = evaluate(model, split_cases(run, data_root, split), steps, ensemble, seed=0)
    figures.update(unseen_patient_figures(figures, run, split))
    figures["settings"] = {"steps": steps, "ensemble": ensemble, "seed": 0, **({"start_timestep": start_timestep} if start_timestep is not None else {})}
    card["validation"] = figures
    card["validation_history"] = history
    path.write_text(json.dumps(card, indent=2))
    return card
