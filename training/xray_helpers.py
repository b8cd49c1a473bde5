"""What the small X-ray networks beside the diffusion models share: their training loop and
their export into every X-ray card (the level map, ``level_map.py``; the patch networks:
endplate tilt, vertebra level, vertebra outline, each a ``PatchHelper``). All train on the
``verdiff-xray`` card split's training images and validate on its validation images; all
X-ray cards share that split, so none has seen its own validation images."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from VerdiffSegmentLib.io import read_image

from .datasets import aasce_cases


def bundled_card(name: str = "verdiff-xray") -> dict:
    """The bundled card's JSON (its ``training.split`` is every X-ray helper's split)."""
    return json.loads((Path(__file__).resolve().parents[1] / "Resources" / "Models" / f"{name}.json").read_text())


def named_radiographs(aasce_root: Path, names: set[str]):
    """(picture float32 [rows, cols] as inference reads it, landmark file) of each named AASCE
    radiograph whose landmarks describe 17 vertebrae (``aasce_cases(usable_only=True)``): what
    every helper's ``load_samples`` starts from."""
    for name, image_path, mat in aasce_cases(aasce_root, usable_only=True):
        if name in names:
            yield sitk.GetArrayFromImage(read_image(image_path)).astype(np.float32), mat


def random_placement(rng: np.random.Generator, centre: np.ndarray, width: float, centre_jitter: float, width_jitter: tuple[float, float],
                     rotation_degrees: float) -> tuple[np.ndarray, float, float]:
    """(centre, width, angle in degrees) of a training patch on a vertebra at ``centre`` ``width``
    wide, placed as roughly as a segmentation's piece places it: the width scaled within
    ``width_jitter``, the centre moved by up to ``centre_jitter`` widths each way, the frame turned
    by up to ``rotation_degrees`` (drawn in that order)."""
    placed_width = width * rng.uniform(*width_jitter)
    placed_centre = centre + rng.uniform(-centre_jitter, centre_jitter, 2) * width
    return placed_centre, placed_width, rng.uniform(-rotation_degrees, rotation_degrees)


def random_gamma(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A 0..1 training image (patch or strip) raised to exp(N(0, 0.25)) on four draws of five,
    negatives clamped first: the helpers' intensity augmentation."""
    if rng.random() < 0.8:
        return image.clamp(min=0) ** float(np.exp(rng.normal(0, 0.25)))
    return image


def validation_items(data_root: Path, card: dict) -> list[tuple[Path, Path]]:
    """(image, landmarks) of the card split's validation radiographs."""
    names = set(card["training"]["split"]["validation"])
    return [(image, mat) for name, image, mat in aasce_cases(Path(data_root) / "xray-aasce", usable_only=True) if name in names]


def train_on_split(network: torch.nn.Module, load: Callable, batch_loss: Callable, evaluate: Callable[[torch.nn.Module, list], dict], data_root: Path,
                   out: Path, steps: int, batch_size: int, lr: float, seed: int, val_every: int, init: Path | None, limit: int | None,
                   command: str | None, print_every: int = 25) -> dict:
    """What each helper's ``train`` does around its own samples and loss: seed PyTorch and a
    NumPy generator, ``load(aasce_root, names)`` the ``verdiff-xray`` card split's training
    radiographs (``limit``: the first N, of the validation ones too), then ``fit`` on
    ``batch_loss(samples, rng)`` with ``evaluate(network, validation_items)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    card = bundled_card()
    samples = load(Path(data_root) / "xray-aasce", set(card["training"]["split"]["train"]))[:limit]
    validation = validation_items(data_root, card)[:limit]
    return fit(network, lambda: batch_loss(samples, rng), lambda: evaluate(network, validation), out, steps, batch_size, lr, seed, val_every, init, command,
               len(samples), print_every)


def fit(network: torch.nn.Module, batch_loss: Callable[[], torch.Tensor], validate: Callable[[], dict], out: Path, steps: int, batch_size: int,
        lr: float, seed: int, val_every: int, init: Path | None, command: str | None, training_images: int, print_every: int = 25) -> dict:
    """Warm-start ``network`` from ``init`` (a state dict; fp16 is read as float32; a head of
    another shape is left fresh and the rest must match), then
    AdamW (weight decay 1e-4) with a one-cycle schedule (5 % warm-up) on ``batch_loss()`` (a
    fresh batch of ``batch_size`` each call); every ``val_every`` steps and at the end
    ``validate()`` is appended to the run's log and ``out/stepN.pt`` and ``out/log.json``
    (the settings, ``command`` and the validations) are written. Returns the last validation."""
    if init is not None:
        state = {k: v.float() for k, v in torch.load(init, map_location="cpu", weights_only=True).items()}
        own = network.state_dict()
        # a sibling helper's weights (same patch stages, another head: the outline network from the
        # tilt network's) warm-start the features; anything else must match whole
        head = {k for k in own if k.startswith("head.") and (k not in state or state[k].shape != own[k].shape)}
        features = {k: v for k, v in state.items() if k in own and k not in head}
        if head and (set(own) - head != set(features) or any(v.shape != own[k].shape for k, v in features.items())):
            raise ValueError(f"{init} does not hold this network's features (only a head of another shape may differ)")
        network.load_state_dict(features if head else state, strict=not head)
        if head:
            print(json.dumps({"warm_start": str(init), "fresh": sorted(head)}), flush=True)
    log = {"command": command, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "init": str(init) if init else None,
           "training_images": training_images, "validation": []}
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.time()
    for step in range(1, steps + 1):
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % print_every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - clock, 1)}), flush=True)
        if step % val_every == 0 or step == steps:
            scores = {"step": step, **validate()}
            log["validation"].append(scores)
            print(json.dumps(scores), flush=True)
            torch.save(network.state_dict(), out / f"step{step}.pt")
            (out / "log.json").write_text(json.dumps(log, indent=1))
    return log["validation"][-1]


def export_into_xray_cards(checkpoint: Path, models_dir: Path, data_root: Path, run_log: Path | None, weights: str, network: torch.nn.Module,
                           evaluate: Callable[[torch.nn.Module, list], dict], place: tuple[str, str], describe: dict, split_note: str) -> dict:
    """Write ``checkpoint``'s weights (fp16) as ``models_dir/weights``, load them back into
    ``network``, validate with ``evaluate(network, validation_items)`` of the cards' split and set ``card[place[0]][place[1]]``
    in every X-ray card there to the entry (weights, sha256, ``describe``, training history,
    validation with ``split_note``). Returns the entry."""
    from VerdiffSegmentLib.models import sha256_of

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    path = Path(models_dir) / weights
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    network.load_state_dict({k: v.float() for k, v in torch.load(path, weights_only=True).items()})
    cards = {card_path: json.loads(card_path.read_text()) for card_path in sorted(Path(models_dir).glob("*.json"))}
    cards = {card_path: card for card_path, card in cards.items() if card.get("modality") == "XR"}
    validation = evaluate(network, validation_items(data_root, next(iter(cards.values()))))
    history = json.loads(Path(run_log).read_text()) if run_log else {}
    entry = {
        "weights": weights,
        "sha256": sha256_of(path),
        **describe,
        "training": {k: history.get(k) for k in ("command", "steps", "batch_size", "lr", "init", "training_images")} | {"checkpoint": Path(checkpoint).name},
        "validation": {**validation, "split": split_note},
    }
    section, key = place
    for card_path, card in cards.items():
        card.setdefault(section, {})[key] = entry
        card_path.write_text(json.dumps(card, indent=2))
    return entry


@dataclass(frozen=True)
class PatchHelper:
    """One patch network beside the diffusion models (``VerdiffSegmentLib.vertebra_patches``):
    what it is, how its samples are drawn and scored, and where the cards name it; ``train``
    and ``export`` are the same for all of them.

    Args:
        network: builds the untrained network.
        load_samples: ``load_samples(aasce_root, names)`` -> the named radiographs' samples.
        draw: ``draw(samples, rng, batch_size)`` -> one augmented batch (patches, targets).
        loss: ``loss(outputs, targets)`` -> the scalar training loss.
        evaluate: ``evaluate(network, validation_items)`` -> the validation figures (dict).
        weights: the file name of the exported weights in the models folder.
        place: (section, key) of the X-ray cards' entry that names the weights.
        what: the entry's ``what``: what the network reads and what the pipeline does with it.
        split_note: the entry's ``validation.split``: what the validation figures are measured on.
        describe: ``describe(network)`` -> the entry's ``network`` (its constructor keywords;
            default: its ``channels``).
    """

    network: Callable[[], torch.nn.Module]
    load_samples: Callable
    draw: Callable
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, list], dict]
    weights: str
    place: tuple[str, str]
    what: str
    split_note: str
    describe: Callable[[torch.nn.Module], dict] = lambda network: {"channels": list(network.channels)}

    def train(self, data_root: Path, out: Path, steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, val_every: int = 500,
              init: Path | None = None, limit: int | None = None, command: str | None = None) -> dict:
        """Train on the ``verdiff-xray`` card split's training images (``limit``: the first N),
        validate on its validation images every ``val_every`` steps; writes ``out/stepN.pt``,
        ``out/log.json`` and returns the last validation (``train_on_split``)."""
        network = self.network()

        def batch_loss(samples, rng) -> torch.Tensor:
            images, targets = self.draw(samples, rng, batch_size)
            return self.loss(network(images), targets)

        return train_on_split(network, self.load_samples, batch_loss, self.evaluate, data_root, out, steps, batch_size, lr, seed, val_every, init, limit,
                              command, print_every=50)

    def export(self, checkpoint: Path, models_dir: Path, data_root: Path, run_log: Path | None = None) -> dict:
        """Write ``checkpoint``'s weights (fp16) as ``models_dir/<weights>``, validate them on the
        card split's validation images, and set the entry at ``place`` in every X-ray card there
        (``export_into_xray_cards``)."""
        network = self.network()
        return export_into_xray_cards(checkpoint, models_dir, data_root, run_log, self.weights, network, self.evaluate, self.place,
                                      {"network": self.describe(network), "what": self.what}, self.split_note)
