"""Label mapping: each source's label ids -> vertebral levels -> the product's labels.

Every source names vertebrae with its own ids; training maps them through level names
(C1..C7, T1..T12, T13, L1..L6, S1, sacrum) to the labels a model card ships:

Sources (``source =`` in a data set config):
- ``verse``: VerSe 2019/2020: 1..7 = C1..C7, 8..19 = T1..T12, 20..25 = L1..L6, 26 = sacrum,
  28 = T13 (27, the coccyx, is not mapped).
- ``totalsegmentator``: TotalSegmentator v2 "total": 25 = sacrum, 26 = S1, 27..31 = L5..L1,
  32..43 = T12..T1, 44..50 = C7..C1 (organs, ribs and the rest are background).
- ``lumbar-1-5``: 1..5 = L1..L5 (MyoSegmenTUM VB3, vertebral bodies only).
- ``aasce``: the 17 landmark quadrilaterals top to bottom, 1..17 = T1..L5 (``datasets.aasce_mask``).

Product label schemes:
- ``binary``: one label, value 1, for every vertebra of the chosen levels: what the bundled
  models segment.
- ``levels``: one label per chosen level, values 1..K in cranio-caudal order; the network's
  sigmoid channel k-1 is label k (``inferers.ensemble.labels_from_probability``).
- ``binary-gaps``: the ``binary`` label, and a second network channel that is no product
  label: the *gaps* between neighbouring vertebrae (``neighbour_gaps``). Inference keeps the
  binary channel as the segmentation and uses the gaps only to tell the vertebrae apart
  (``VerdiffSegmentLib.levels.separate_instances``). Training labels encode the two as bits
  (bit 0 vertebra, bit 1 gap: the regions overlap), ``bit_masks`` makes the channels.

  Why (issue 15): the binary X-ray model's vertebrae merge where the discs are 1-2 pixels of
  its 5-pixel grid, so the per-vertebra step rarely finds the 17 it needs to name them. A
  multi-class head (``levels``) would have to tell T7 from T8 from a 224-pixel crop, a global
  count its receptive field does not see; a gap between two vertebrae is local, and what the
  separation needs. The binary channel keeps its target, so the union's Dice need not drop.

Decision: by default the chosen levels are every vertebra above the sacrum (C1..L6 and
T13). S1 and the sacrum are left out because the bundled CT recipe leaves them out (it
takes TotalSegmentator ids 27..50 of the abdominal CT, not 26 = S1); a config can list
them in ``levels`` to include them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

LEVELS = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["T13"] + [f"L{i}" for i in range(1, 7)] + ["S1", "sacrum"]
)
DEFAULT_LEVELS = LEVELS[: LEVELS.index("L6") + 1]  # every vertebra above the sacrum

_CERVICAL, _THORACIC, _LUMBAR = LEVELS[0:7], LEVELS[7:19], LEVELS[20:26]  # C1..C7, T1..T12, L1..L6

SOURCES: dict[str, dict[int, str]] = {
    "verse": {
        **{i + 1: level for i, level in enumerate(_CERVICAL + _THORACIC + _LUMBAR)},
        26: "sacrum",
        28: "T13",
    },
    "totalsegmentator": {
        25: "sacrum",
        26: "S1",
        **{27 + i: level for i, level in enumerate(reversed(_CERVICAL + _THORACIC + _LUMBAR[:5]))},
    },
    "lumbar-1-5": {i + 1: level for i, level in enumerate(_LUMBAR[:5])},
    "aasce": {i + 1: level for i, level in enumerate(_THORACIC + _LUMBAR[:5])},
}

SCHEMES = ("binary", "levels", "binary-gaps")
GAP_SLACK_PIXELS = 1.0  # ``neighbour_gaps``: the band reaches this far past the closest approach

# A fixed palette for per-level labels (RGB in 0..1), cycled: neighbouring levels differ.
_PALETTE = [(0.9, 0.75, 0.5), (0.55, 0.75, 0.9), (0.6, 0.85, 0.55), (0.9, 0.55, 0.55), (0.75, 0.6, 0.9), (0.95, 0.9, 0.45)]


def source_levels(source: str) -> list[str]:
    """Levels a source can label, in cranio-caudal order."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}; known: {', '.join(sorted(SOURCES))}")
    names = set(SOURCES[source].values())
    return [level for level in LEVELS if level in names]


def default_levels(sources) -> list[str]:
    """The levels a run labels when its config names none: those its sources have, above the sacrum."""
    have = {level for source in sources for level in source_levels(source)}
    return [level for level in DEFAULT_LEVELS if level in have]


@dataclass(frozen=True)
class LabelScheme:
    """The product's labels: ``binary`` or one per level of ``levels`` (cranio-caudal order)."""

    scheme: str = "binary"
    levels: tuple[str, ...] = tuple(DEFAULT_LEVELS)

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown label scheme {self.scheme!r}; use {' or '.join(SCHEMES)}")
        unknown = [level for level in self.levels if level not in LEVELS]
        if unknown:
            raise ValueError(f"unknown levels {unknown}; levels are {', '.join(LEVELS)}")
        object.__setattr__(self, "levels", tuple(level for level in LEVELS if level in self.levels))

    @property
    def num_classes(self) -> int:
        """Product labels (what the card's ``labels`` list)."""
        return len(self.levels) if self.scheme == "levels" else 1

    @property
    def gaps(self) -> bool:
        """Whether the network has the gap channel after the product labels (``binary-gaps``)."""
        return self.scheme == "binary-gaps"

    @property
    def network_channels(self) -> int:
        """The network's output channels: the product labels, and the gaps where the scheme has them."""
        return self.num_classes + int(self.gaps)

    def value_of(self, level: str) -> int:
        """Product label value of a level (0 where the level is not labelled)."""
        if level not in self.levels:
            return 0
        return self.levels.index(level) + 1 if self.scheme == "levels" else 1

    def lookup(self, source: str) -> np.ndarray:
        """Table indexed by source id giving the product label (uint8)."""
        source_levels(source)  # validates the name
        table = np.zeros(max(SOURCES[source]) + 1, np.uint8)
        for source_id, level in SOURCES[source].items():
            table[source_id] = self.value_of(level)
        return table

    def apply(self, source_ids: np.ndarray, source: str) -> np.ndarray:
        """Map an array of source ids to product labels; ids the source does not name become 0."""
        table = self.lookup(source)
        ids = np.asarray(source_ids)
        inside = (ids >= 0) & (ids < len(table))
        return np.where(inside, table[np.clip(ids, 0, len(table) - 1).astype(np.int64)], 0).astype(np.uint8)

    def card_labels(self, binary_label: dict, structure: str) -> list[dict]:
        """The card's ``labels``: the recipe's own label for ``binary``; per level otherwise,
        named "<level> <structure>" (structure: "vertebral body" or "vertebra")."""
        if self.scheme != "levels":
            return [dict(binary_label)]
        return [
            {"value": k + 1, "name": f"{level} {structure}", "covers": f"{structure} {level}", "color": list(_PALETTE[k % len(_PALETTE)])}
            for k, level in enumerate(self.levels)
        ]

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "levels": list(self.levels)}

    def training_labels(self, source_ids: np.ndarray, source: str, spacing) -> np.ndarray:
        """The label maps training draws from, [slices, rows, cols] of source ids on the
        training grid -> uint8 product labels; ``binary-gaps`` adds bit 1 for the gaps between
        neighbouring levels, found slice by slice (``neighbour_gaps``; ``spacing``: the
        in-plane (rows, cols) spacing in mm)."""
        labels = self.apply(source_ids, source)
        if not self.gaps:
            return labels
        per_level = LabelScheme("levels", self.levels).apply(source_ids, source)
        gaps = np.stack([neighbour_gaps(plane, spacing) for plane in per_level])
        return labels | (gaps.astype(np.uint8) << 1)


def bit_masks(labels: np.ndarray, channels: int) -> np.ndarray:
    """``binary-gaps`` training labels [*spatial] -> float32 masks [channels, *spatial]: channel k is bit k."""
    bits = (1 << np.arange(channels, dtype=labels.dtype)).reshape(-1, *[1] * labels.ndim)
    return ((labels[None] & bits) > 0).astype(np.float32)


def neighbour_gaps(levels: np.ndarray, spacing, slack_pixels: float = GAP_SLACK_PIXELS) -> np.ndarray:
    """Boolean map of the gaps between neighbouring levels in one 2D per-level label map
    (values 1..K, consecutive values are neighbours; 0 background).

    Decision: the gap between levels k and k+1 is the set of points whose distances to the
    two add up to at most their closest approach plus ``slack_pixels`` pixels: the lens
    between the two (the disc space, and where they touch a band across the contact),
    narrowing to nothing beside them. So it exists however thin the disc is on the grid
    (AASCE quadrilaterals of neighbours often touch or overlap by a pixel), and it reaches a
    little into both vertebrae, which leaves a cut a pixel or two wide even where the
    network's binary channel fills the disc. Levels that are not both present on the slice
    have no gap."""
    spacing = np.asarray(spacing, float)
    slack = slack_pixels * float(spacing.min())
    present = set(int(v) for v in np.unique(levels) if v)
    gaps = np.zeros(levels.shape, bool)
    distances = {}
    for value in sorted(present):
        if value + 1 not in present:
            continue
        for v in (value, value + 1):
            if v not in distances:
                distances[v] = ndi.distance_transform_edt(levels != v, sampling=spacing)
        total = distances[value] + distances[value + 1]
        gaps |= total <= total.min() + slack
    return gaps
