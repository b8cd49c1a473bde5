"""What a segmentation request carries, and the one place its values are checked.

``SegmentSettings`` is used by the command line (``cli``: built from the options, and
turned back into them for the Slicer module's process), by the Slicer logic and GUI (built
from the parameter node), and by ``pipeline.segment``, whose keyword arguments (kept for
its many library callers: evaluation, benchmarks, tests) are checked through it.

Two levels of checks, each raising one clear ``VerdiffError``:

- on construction, what holds for every model: types, ensemble 1..``MAX_ENSEMBLE``, batch
  size 1..``MAX_BATCH_SIZE``, seed 0..2^31-1;
- ``for_card(card)``, against the chosen model: steps within ``card.steps_range()`` (a
  Verdiff-Net card sampling from t = 150 takes 1-151, the other diffusion families
  1-1000), ensemble within ``card.ensemble_range()``, the card's defaults for steps and
  ensemble left unset. A deterministic family (the U-Net baselines) takes no steps and
  one member: whatever was asked is replaced by 0 steps and 1 member, not refused, so a
  GUI whose boxes are greyed out (holding the previous model's values) still runs it.

Decisions: the seed range is a Qt spin box's (a 32-bit int), so every run of the command
line can be repeated from the Slicer module; the device is kept as text (``auto``,
``cpu``, ``cuda``, ``cuda:N``, ``mps``) and resolved where the work runs
(``pipeline.resolve_device``), since the GUI's process and the GUI may differ.

Imports neither torch nor the models at module level: the Slicer module declares its
parameter node with these limits before PyTorch is installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import VerdiffError

# The most samples ``pipeline.segment`` averages (memory and time grow linearly with it).
MAX_ENSEMBLE = 32
# Slices (3D models: windows) per network call; more is never faster and only risks memory.
MAX_BATCH_SIZE = 4096
DEFAULT_BATCH_SIZE = 8

# Card-independent bounds, for what is declared before a card is chosen (the Slicer
# parameter node, the GUI's spin boxes until a model is picked): the widest any family
# accepts (a scheduler's T = 1000 training timesteps); ``for_card`` narrows them.
STEPS_LIMITS = (1, 1000)
ENSEMBLE_LIMITS = (1, MAX_ENSEMBLE)
BATCH_SIZE_LIMITS = (1, MAX_BATCH_SIZE)
SEED_LIMITS = (0, 2**31 - 1)


@dataclass(frozen=True)
class SegmentSettings:
    """One segmentation request. ``steps``/``ensemble`` None: the card's defaults."""

    model: str = "auto"
    steps: int | None = None
    ensemble: int | None = None
    device: str = "auto"
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self):
        for name in ("steps", "ensemble", "seed", "batch_size"):
            value = getattr(self, name)
            if value is None and name in ("steps", "ensemble"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    raise VerdiffError(f"{name.replace('_', ' ')} must be a whole number, got {value!r}") from None
                if number != value:
                    raise VerdiffError(f"{name.replace('_', ' ')} must be a whole number, got {value!r}")
                object.__setattr__(self, name, number)  # numpy integers, 5.0: the same request
        if not isinstance(self.model, str) or not self.model.strip():
            raise VerdiffError(f"model must be a name or auto, got {self.model!r}")
        if not isinstance(self.device, str) or not self.device.strip():
            raise VerdiffError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check_range("ensemble size", self.ensemble, ENSEMBLE_LIMITS)
        _check_range("batch size", self.batch_size, BATCH_SIZE_LIMITS)
        _check_range("seed", self.seed, SEED_LIMITS)

    def for_card(self, card) -> SegmentSettings:
        """These settings for ``card`` (a ``models.ModelCard``): its name, its defaults where
        steps or ensemble are unset, and every value within the card's ranges."""
        steps_range = card.steps_range()
        if steps_range is None:  # deterministic: one pass (see the module docstring)
            return replace(self, model=card.name, steps=0, ensemble=1)
        steps = card.default_steps if self.steps is None else self.steps
        ensemble = card.default_ensemble if self.ensemble is None else self.ensemble
        _check_range("sampling steps", steps, steps_range)
        _check_range("ensemble size", ensemble, card.ensemble_range())
        return replace(self, model=card.name, steps=steps, ensemble=ensemble)

    def segment_arguments(self) -> dict:
        """The keyword arguments of ``pipeline.segment`` (all but the model, which is its card)."""
        return {key: value for key, value in asdict(self).items() if key != "model"}

    def cli_arguments(self) -> list[str]:
        """The same request as ``verdiff segment`` options (``cli.build_parser`` reads them back)."""
        arguments = ["--model", self.model, "--device", self.device, "--seed", str(self.seed), "--batch-size", str(self.batch_size)]
        for option, value in (("--steps", self.steps), ("--ensemble", self.ensemble)):
            if value is not None:
                arguments += [option, str(value)]
        return arguments


def _check_range(what: str, value: int | None, limits: tuple[int, int]) -> None:
    low, high = limits
    if value is not None and not low <= value <= high:
        raise VerdiffError(f"{what} must be between {low} and {high}, got {value}")
