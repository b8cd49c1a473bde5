"""Model soup: a bundled model's weights replaced by the uniform average of weights fine-tuned
from them (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time").

Why: on two CPU cores a continuation of a bundled model moves its validation figures by about
as much as the noise between its checkpoints (the X-ray model's level Dice swings by 0.02
between checkpoints 300 steps apart, docs/levels.md session 28). Checkpoints fine-tuned from
one start lie in one basin, and their average keeps what they share and cancels what each
fitted alone, at the cost of one network at inference. Decided: the uniform average, not the
greedy soup (adding ingredients while validation improves), since greedy selection would
choose on the held-out split that then reports the figure; the ingredients are fixed before
any is measured.

``soup_into_card``: every ingredient must hold the card's network (same tensor names and
shapes); the average is written in fp16 as the bundled weights are (each ingredient started
from fp16 weights; fp16 matched fp32 at every export so far), the card's sha256, weights,
``training.history`` (one stage per ingredient run, then the soup), ``cumulative`` and
``command`` are updated, and the card is re-validated at its own sampling defaults
(``export.set_defaults``), the figures it replaces kept in ``validation_history``. The
reliability threshold and the per-vertebra figures are not re-measured here
(``benchmarks/warning_rates.py``, ``benchmarks/levels_accuracy.py``), as after ``export``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from VerdiffSegmentLib.models import read_card, sha256_of

from .checkpoint import atomic_save, load_checkpoint
from .export import cumulative_training, set_defaults, training_history


def ingredient_weights(path: Path) -> dict:
    """A state dict as float32 from exported weights, ``model.pt`` / ``best.pt``, or a resumable
    ``checkpoint.pt`` (its ``model``)."""
    state = load_checkpoint(path)
    state = state["model"] if "format" in state and "model" in state else state
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_same_network(reference: dict, state: dict, what: str) -> None:
    """Raise where ``state`` holds other tensors or shapes than ``reference`` (another network)."""
    if state.keys() != reference.keys():
        raise ValueError(f"{what} holds other tensors than {len(reference)} of the card's network (another network)")
    for key, value in state.items():
        if value.shape != reference[key].shape:
            raise ValueError(f"{what}: {key} is {tuple(value.shape)}, not {tuple(reference[key].shape)} (another network)")


def average_weights(states: list[dict]) -> dict:
    """The element-wise mean of state dicts of one network. Integer tensors (a batch norm's
    ``num_batches_tracked``, which only a norm without momentum reads) take the largest."""
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        check_same_network(first, state, f"ingredient {i}")
    stacked = {key: torch.stack([s[key] for s in states]) for key in first}
    return {key: values.mean(dim=0) if values.is_floating_point() else values.max(dim=0).values for key, values in stacked.items()}


def _run_stage(path: Path) -> dict | None:
    """The training stage that wrote an ingredient: its run folder's own (``export.training_history``),
    None for weights outside a run folder (the bundled card's own)."""
    run_dir = Path(path).parent
    if not (run_dir / "command.txt").exists():
        return None
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    return training_history(run_dir, run_info)[-1]


def soup_into_card(model_name: str, ingredients: list[Path], models_dir: Path, data_root: Path, command: str) -> dict:
    """Replace ``models_dir/model_name.pt`` by the average of ``ingredients`` and re-validate its
    card (module docstring); returns the card. Nothing is changed if an ingredient does not fit
    or the re-validation fails."""
    models_dir = Path(models_dir)
    card_path, weights_path = models_dir / f"{model_name}.json", models_dir / f"{model_name}.pt"
    card = read_card(card_path)  # checked on the way in
    if len(ingredients) < 2:
        raise ValueError("a soup needs at least two ingredients")
    started = time.time()
    soup = average_weights([ingredient_weights(Path(p)) for p in ingredients])
    check_same_network(ingredient_weights(weights_path), soup, "the soup")
    stages = []
    for path in ingredients:
        stage = _run_stage(Path(path))
        if stage is not None and stage not in stages:
            stages.append(stage)
    raw = card.raw
    training = raw["training"]
    soup_stage = {"command": command, "optimiser_steps": 0, "wall_seconds": round(time.time() - started, 3), "device": "cpu", "threads": 1,
                  "what": f"uniform average of {len(ingredients)} weights (training/soup.py): " + ", ".join(str(p) for p in ingredients)}
    training["history"] = list(training.get("history", [])) + stages + [soup_stage]
    training["cumulative"] = cumulative_training(training["history"])
    training["command"] = " && ".join(c for c in [training.get("command")] + [s.get("command") for s in stages] + [command] if c)
    training["weights_from"] = soup_stage["what"]
    before = card_path.read_bytes(), weights_path.read_bytes()
    try:
        atomic_save({k: v.half() if v.is_floating_point() else v for k, v in soup.items()}, weights_path)
        raw["sha256"] = sha256_of(weights_path)
        card_path.write_text(json.dumps(raw, indent=2))
        scheduler = raw.get("scheduler", {})
        return set_defaults(model_name, models_dir, data_root, card.default_steps, card.default_ensemble, scheduler.get("start_timestep"))
    except BaseException:  # a validation that cannot run (data missing, interrupted) leaves the card as it was
        card_path.write_bytes(before[0])
        weights_path.write_bytes(before[1])
        raise
