"""Bundled models: their JSON cards, integrity checks and loading.

A model is a pair in ``Resources/Models``: ``NAME.json`` (the card) and the weights file
it names. The card's ``sha256`` must match the weights before anything is unpickled, and
weights load with ``torch.load(..., weights_only=True)``: a tampered or foreign file is a
clear error, never code execution.

Each card names its ``family`` (``families``): the network class, scheduler and sampler
its weights belong to.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import VerdiffError
from .families import Family, get_family
from .inferers import memory_layout
from .settings import MAX_ENSEMBLE  # the request's limits live in settings.py

# Which card "auto" takes for each detected modality.
AUTO_MODALITY = {"XR": "verdiff-xray", "CT": "verdiff-ct", "MR": "verdiff-mr"}


def models_dir() -> Path:
    """``$VERDIFF_MODELS_DIR``, else ``Resources/Models`` of this checkout (or of the installed module)."""
    if os.environ.get("VERDIFF_MODELS_DIR"):
        return Path(os.environ["VERDIFF_MODELS_DIR"])
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "Resources" / "Models"
        if candidate.is_dir():
            return candidate
    return here.parents[2] / "Resources" / "Models"


@dataclass
class ModelCard:
    path: Path
    data: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def weights_path(self) -> Path:
        return self.path.parent / self.data["weights"]

    @property
    def spacing_mm(self) -> float:
        return float(self.data["input"]["spacing_mm"])

    @property
    def spatial_dims(self) -> int:
        """2: the network segments sagittal slices; 3: volume patches on an isotropic grid."""
        return int(self.data["network"].get("spatial_dims", 2))

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        """The 3D networks' training patch (slices, rows, columns), the sliding window's size."""
        patch = self.data["input"].get("patch_size")
        return None if patch is None else tuple(int(n) for n in patch)

    @property
    def normalisation(self) -> dict:
        return self.data["input"]["normalisation"]

    @property
    def labels(self) -> list[dict]:
        return self.data["labels"]

    @property
    def postprocess(self) -> dict:
        """The card's ``postprocess`` settings (``postprocess.py``); none for older cards."""
        return dict(self.data.get("postprocess") or {})

    @property
    def self_dice_warning(self) -> float | None:
        """The card's calibrated reliability threshold (``reliability.py``); None: the default."""
        value = (self.data.get("reliability") or {}).get("self_dice_warning")
        return None if value is None else float(value)

    @property
    def default_steps(self) -> int:
        return int(self.data["defaults"]["steps"])

    @property
    def default_ensemble(self) -> int:
        return int(self.data["defaults"]["ensemble"])

    def steps_range(self) -> tuple[int, int] | None:
        """(fewest, most) sampling steps this card accepts, None for a deterministic family.

        The scheduler's ``set_timesteps`` enforces it: the kept timesteps run from the card's
        ``scheduler.start_timestep`` (T-1 when absent) down to 0, so at most start + 1 steps
        (151 for the cards that start at t=150). ``verdiff segment --help`` and ``verdiff
        models`` show this range."""
        scheduler = make_scheduler(self)
        return None if scheduler is None else (1, int(scheduler.start_timestep) + 1)

    def ensemble_range(self) -> tuple[int, int]:
        """(fewest, most) ensemble members: 1..MAX_ENSEMBLE, just 1 for a deterministic family."""
        return (1, MAX_ENSEMBLE) if self.family.scheduler is not None else (1, 1)

    @property
    def family(self) -> Family:
        try:
            return get_family(self.data["family"])
        except VerdiffError as error:
            raise VerdiffError(f"model {self.name}: {error}") from None

    def summary(self) -> str:
        labels = "; ".join(f"{label['name']} ({label['covers']})" for label in self.labels)
        variant = "  3D" if self.spatial_dims == 3 else ""
        return f"{self.name}  v{self.data['version']}  {self.data['family']}{variant}  {self.data['modality']}  labels: {labels}"


REQUIRED_KEYS = ("name", "family", "version", "modality", "weights", "sha256", "labels", "network", "input", "defaults")


def read_card(path: Path) -> ModelCard:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise VerdiffError(f"cannot read model card {path}: {error}") from None
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise VerdiffError(f"model card {path} lacks {', '.join(missing)}")
    return ModelCard(Path(path), data)


def list_cards(directory: Path | None = None) -> list[ModelCard]:
    directory = directory or models_dir()
    return [read_card(p) for p in sorted(Path(directory).glob("*.json"))]


def get_card(name: str, directory: Path | None = None) -> ModelCard:
    cards = {card.name: card for card in list_cards(directory)}
    if name not in cards:
        raise VerdiffError(f"unknown model {name!r}; bundled models: {', '.join(sorted(cards)) or 'none'}")
    return cards[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Check the weights' sha256 against the card, then build the family's network and load them."""
    path = card.weights_path
    if not path.is_file():
        raise VerdiffError(f"weights of model {card.name} not found: {path}")
    if sha256_of(path) != card.data["sha256"]:
        raise VerdiffError(f"weights of model {card.name} do not match the sha256 in its card ({path.name} was changed or damaged)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Weights may be shipped in fp16 (half the file); the networks compute in float32.
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        network = card.family.network(**card.data["network"])
        network.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - any failure here means unusable weights
        raise VerdiffError(f"weights of model {card.name} cannot be loaded: {type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    # channels-last: oneDNN's convolutions run 10-25 % faster on it than on NCHW (measured on
    # the bundled networks, CPU); the inputs are made channels-last by the sampler. The 3D
    # networks' 5D weights take its volume form.
    return network.to(device, memory_format=memory_layout(card.spatial_dims)).eval()


def make_scheduler(card: ModelCard):
    """The card's scheduler, or None for a deterministic family."""
    family = card.family
    return None if family.scheduler is None else family.scheduler(**card.data.get("scheduler", {}))
