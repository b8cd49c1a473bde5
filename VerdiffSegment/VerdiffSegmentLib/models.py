"""Bundled models: their JSON cards, integrity checks and loading.

A model is a pair in ``Resources/Models``: ``NAME.json`` (the card) and the weights file
it names. The card's ``sha256`` must match the weights before anything is unpickled, and
weights load with ``torch.load(..., weights_only=True)``: a tampered or foreign file is a
clear error, never code execution.

Each card names its ``family`` (``families``): the network class, scheduler and sampler
its weights belong to.

2.5D cards: ``input.context_slices`` k (absent: 0, one sagittal slice per input, as every card
written before it) adds k neighbouring slices on each side as input channels
(``preparation`` decision 4), so the network's ``in_channels`` must be 1 + 2k; a card that
says otherwise, or gives context to a 3D network (which sees the volume already), is refused.
A 2.5D card may name ``input.planar_model``: the bundled 1-channel model that segments a single
slice (a 2D MR picture) when the model is chosen by modality (``pipeline.choose_card``).
``input.context_distance_mm`` d (absent: the card's ``spacing_mm``, as every 2.5D card written
before it) is the distance between neighbouring input channels (``preparation`` decision 4).

Views: ``input.view`` "coronal" (absent: "sagittal", as every card written before it) makes a 2D
card of volumes sample the coronal planes (``preparation.coronal_view``; ``training`` ``--view``) and
give its results back in the volume's geometry. Not for radiographs (one plane) or 3D networks
(every plane already).

Tiles: ``input.tile_px`` t (absent: whole slices) samples each sagittal slice of a 2D card in
overlapping t x t tiles (half a tile apart, Gaussian-blended; ``pipeline.sample_tiles``), the
size the network was trained on; an axis shorter than t is one window of its own length, or,
with ``input.tile_padding`` "zeros", padded with zeros at its end up to t, as training pads a
slice smaller than its crop (the X-ray cards: most radiographs are narrower than their crop). Why: the
prior's multi-scale fusion module squeezes each feature map to one vector (a global average)
and its GroupNorm normalises over the whole input, so a network trained on crops reads a whole
slice, more or less body than it ever saw at once, differently. On the held-out abdominal CT
the chest-only CT model (176 px crops) scored binary Dice 0.664 on whole slices of 224 x 340
px and 0.819 in 176 px tiles, level Dice 0.504 -> 0.636 (docs/levels.md, session 27).

Edge padding: ``input.edge_padding_px`` n (absent: 0) pads each sagittal slice of a 2D card by
n grid pixels on every side before sampling, the border row repeated, and crops the result
back (``pipeline.sample_slices``): a vertebra the field of view cuts then lies inside the
network's input rather than on its border. ``input.edge_padding_sides`` "superior" pads the top
rows only (the sagittal grid's rows run superior to inferior, ``inferers.sagittal``): the head
end of a lumbar field of view cuts bodies the model segments, its foot end the sacrum, which
no model segments; "all" (the default) pads every side. Padded on every side, the
bundled MR model gained at 16 px and broke at 24 px (the sacrum's top, padded below L5, drawn
and named L5: session 18), and a model trained on padded crops (``training`` ``--edge-pad``)
broke alike (session 19). Padded at the top only it neither draws the sacrum nor breaks: on
the 8 held-out VB3 subjects level Dice 0.869 -> 0.888 / 0.893 / 0.893 and binary Dice 0.8795 ->
0.886 / 0.885 / 0.884 at 16 / 24 / 32 px, every vertebra named right; so the verdiff-mr card
pads the top by 16 px, the smallest margin of that plateau (on 8 training subjects it draws
the fewest T12s, which the VB3 labels leave out: binary 0.9135 -> 0.908, level Dice 0.913 ->
0.911; docs/levels.md, session 19).

Gap channel: a card with ``separation.gap_channel`` (the ``binary-gaps`` training scheme) has
one more network output than labels, after the binary label's: the gaps between neighbouring
vertebrae. It is no segment; ``pipeline.segment`` hands it to the per-vertebra step
(``levels.separate_instances``), and everything else (labels, uncertainty, reliability) reads
the label channels only.

Naming: ``naming.extra_vertebrae`` says where vertebrae beyond the card's levels can lie in
its images. ``"above"`` (the default): only above its range (the MR model never segments the
sacrum, so a sixth body is T12), so with more vertebrae than levels the names still run
bottom-up from the lowest level. ``"either"``: above or below (an AP radiograph shows C7
above T1 and the top of S1 under L5, and the X-ray model draws either at times), so names
are given only when exactly the card's count is found (``levels.levels_by_count``).

Lowest level in view: ``naming.lowest_level_in_view`` (true on the lumbar MR cards: the exam
always shows L5 on the sacrum) names fewer vertebrae than the card's levels bottom-up from its
lowest level when they form one unbroken chain (``levels.levels_of_a_short_chain``).

Beyond the levels: ``naming.leave_out_beyond_levels`` (true on the AP X-ray cards, whose labels
are the T1-L5 landmark bodies) leaves a vertebra named beyond the card's levels (a C7, or the top
of S1) out of the segmentation: the training labels call it background, so what the model drew
there is outside its label; the JSON summary lists it (``vertebrae_left_out``). Unnamed pieces
stay. Not on the lumbar MR cards, measured both ways (session 16): on the held-out VB3 subjects
(labels L1-L5) it gains 0.006 Dice (one T12 in 8 subjects), but on the clinical sagittal slices,
whose masks hold every body in view, it costs 0.056 (10 of 15 slices lose a T12 or T11 the
masks count): a thoracic body drawn and named is right by another source's labels. Nor on CT
(its label is every vertebra).

Rib anchor: ``naming.rib_anchor`` (true on the CT card) names a CT's vertebrae from the last
rib-bearing one (T12), the ribs read from the CT's Hounsfield units (``ribs``), where the
count names nothing.

Level map: ``naming.level_map`` (an object: ``weights``, ``sha256``, ``network`` with the
``UNetBaseline`` keywords, ``box``) names a small network beside the card's own that maps a
whole radiograph to each pixel's level coordinate (``level_map``); the per-vertebra step
names the vertebrae from it where their count and the level network name nothing. Its weights are
checked and loaded as the card's are, on every run (``load_level_map``).

Level network: ``naming.level_network`` (an object: ``weights``, ``sha256``, ``network`` with
the ``VertebraLevelNetwork`` keywords ``channels`` and ``levels``) names a small network that
reads each vertebra's level from a patch of the radiograph around it (``vertebra_level``);
the per-vertebra step names the pieces from it where their count names nothing
(``levels.vertebrae``). Loaded and checked the same way (``load_level_network``).
``naming.strip_network`` (the same kind of object, ``SpineStripNetwork`` keywords ``channels``,
``hidden`` and ``levels``) names a second level reader, a strip of the radiograph along the whole
spine (``spine_strip``), whose names are united with the level network's where the two agree
(``levels.united_names``); it needs the level network. Loaded and checked the same way
(``load_strip_network``).

Endplate tilts: ``cobb.tilt_network`` (an object: ``weights``, ``sha256``, ``network`` with
the ``EndplateTiltNetwork`` keywords) names a small network that reads each vertebra's tilt
from a patch of the radiograph (``endplate_tilt``) for the Cobb angles; loaded and checked
the same way (``load_tilt_network``). Vertebra outlines: ``outline.network`` (the same kind of
object, ``VertebraOutlineNetwork`` keywords) names a small network that reads each piece's four
corners from a patch of the radiograph; the named pieces are replaced by their quadrilaterals
(``vertebra_outline``, ``load_outline_network``). ``cobb.estimate_missing_ends`` (measured on each AP X-ray
card, session 17: true on verdiff-xray, SMAPE 10.63 -> 10.04 %, and unet-xray, 14.40 -> 14.39 %;
not on imgx-xray, 14.74 -> 15.15 %, whose names are wrong for 31 % of the vertebrae and a
placement continues a wrong name; needs the tilt network) places the end vertebrae a segmentation stops short of by the
spine's proportions and reads their tilts there (``cobb.estimate_missing_ends``).

Radiograph input: ``input.radiograph`` (an object: ``pixel_mm``, ``level_rows_px`` as low,
typical, high training pixels a vertebral level takes along the spine, ``polarity``) says what a
training picture's pixel was and at what scale the model draws vertebrae, so that a radiograph with a physical pixel size, another
resolution or inverted grey levels is brought to what the model knows (``radiograph``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import VerdiffError
from .families import Family, get_family
from .inferers import memory_layout
from .transforms import bias_field_of  # input.normalisation.bias_field (preparation, decision 6); transforms imports no image reader
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


# The card layout this code reads. Cards without ``schema_version`` are version 1 (all cards
# written before the key existed); a higher version was written by a newer VerdiffSegment and
# is refused rather than half understood.
CARD_SCHEMA_VERSION = 1

REQUIRED_KEYS = ("name", "family", "version", "modality", "weights", "sha256", "labels", "network", "input", "defaults")
MODALITIES = ("CT", "MR", "XR")


EXTRA_VERTEBRAE = ("above", "either")  # naming.extra_vertebrae (module docstring)
VIEWS = ("sagittal", "coronal")  # input.view (module docstring; preparation.coronal_view)
EDGE_PADDING_SIDES = ("all", "superior")  # input.edge_padding_sides (module docstring)
TILE_PADDINGS = ("none", "zeros")  # input.tile_padding (module docstring, tiles)


@dataclass(frozen=True)
class RadiographInput:
    """Card ``input.radiograph`` (module docstring, radiograph input; ``radiograph``): ``pixel_mm`` the size of a training
    picture's pixel at the detector; ``level_rows_px`` (low, typical, high): the training
    pixels a vertebral level takes, along the spine, at which the model was trained;
    ``polarity``: whether a doubtful result is checked against the inverted picture."""

    pixel_mm: float
    level_rows_px: tuple[float, float, float]
    polarity: bool = True

    @classmethod
    def from_card(cls, entry) -> "RadiographInput":
        if not isinstance(entry, dict) or not {"pixel_mm", "level_rows_px"} <= set(entry):
            raise ValueError("input.radiograph must be an object with pixel_mm and level_rows_px")
        pixel_mm = float(entry["pixel_mm"])
        low, typical, high = (float(v) for v in entry["level_rows_px"])
        polarity = entry.get("polarity", True)
        if not 0 < pixel_mm < 10 or not 0 < low < typical < high or not isinstance(polarity, bool):
            raise ValueError(
                "input.radiograph needs pixel_mm in (0, 10) mm, level_rows_px as low < typical < high training pixels "
                f"and polarity true or false, got {entry!r}"
            )
        return cls(pixel_mm, (low, typical, high), polarity)


def checked_picture_field_of_view(entry) -> tuple[float, tuple[float, float]] | None:
    """``input.picture_field_of_view_mm`` (``preparation`` decision 5) as (typical mm, (low, high)
    px), or a ValueError; None when absent."""
    if entry is None:
        return None
    try:
        typical = float(entry["typical"])
        low, high = (float(v) for v in entry["pixels"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"input.picture_field_of_view_mm must be an object with typical (mm) and pixels [low, high], got {entry!r}") from None
    if not (0 < typical < 2000 and 0 < low < high):
        raise ValueError(f"input.picture_field_of_view_mm needs 0 < typical < 2000 mm and 0 < low < high pixels, got {entry!r}")
    return typical, (low, high)


def checked_context_distance(value, where: str) -> float | None:
    """A 2.5D input's distance between neighbouring channels in mm (None: absent), or a
    ValueError naming ``where``; the cards and the training configs check it alike."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise ValueError(f"{where} must be a distance in mm between 0 and 100, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ModelCard:
    """A model card, parsed and checked once (``read_card``); nothing outside this module
    reads the card's JSON. ``raw`` is the JSON as read, kept only to list it
    (``verdiff models --json``) and to derive a card from it (``derived``)."""

    path: Path
    name: str
    family_name: str
    version: str
    modality: str  # "CT", "MR" or "XR"
    weights_file: str
    sha256: str
    labels: list[dict]  # value, name, covers, color
    network_config: dict  # the family's network constructor keywords
    spacing_mm: float
    normalisation: dict
    patch_size: tuple[int, ...] | None  # 3D networks: the training patch (slices, rows, columns), the sliding window's size
    default_steps: int
    default_ensemble: int
    scheduler_config: dict
    postprocess: dict  # ``postprocess.py`` settings; empty for older cards
    self_dice_warning: float | None  # the card's calibrated reliability threshold (``reliability.py``); None: the default
    training: dict  # provenance: split, config, label scheme, history (may be empty)
    validation: dict  # figures on the held-out split at the defaults (may be empty)
    context_slices: int = 0  # 2.5D: neighbouring sagittal slices on each side in the input (module docstring)
    context_distance_mm: float | None = None  # 2.5D: mm between neighbouring input channels; None: spacing_mm (module docstring)
    edge_padding: int = 0  # input.edge_padding_px: grid pixels each slice is padded by, the border repeated (module docstring)
    edge_padding_sides: str = "all"  # input.edge_padding_sides: "all", or "superior" (the top rows only)
    tile: int | None = None  # input.tile_px: slices are sampled in tiles of this many grid pixels (module docstring)
    tile_padding: str = "none"  # input.tile_padding: "zeros" pads an axis shorter than the tile up to it (module docstring)
    min_vertebrae_share: float | None = None  # ``reliability.vertebra_count_check``; None: no count check
    planar_model: str | None = None  # 2.5D: the model for a single slice (module docstring)
    view: str = "sagittal"  # input.view: the planes the network reads, "sagittal" or "coronal" (module docstring)
    gap_channel: int | None = None  # the network output with the gaps between vertebrae (module docstring)
    extra_vertebrae: str = "above"  # where vertebrae beyond the card's levels can lie: "above" or "either" (module docstring)
    level_map: dict | None = None  # naming.level_map: weights, sha256, network, box (module docstring)
    tilt_network: dict | None = None  # cobb.tilt_network: weights, sha256, network (module docstring)
    outline_network: dict | None = None  # outline.network: weights, sha256, network (module docstring)
    estimate_missing_ends: bool = False  # cobb.estimate_missing_ends: end vertebrae the segmentation misses placed for the angles (module docstring)
    level_network: dict | None = None  # naming.level_network: weights, sha256, network (module docstring)
    strip_network: dict | None = None  # naming.strip_network: weights, sha256, network (module docstring)
    rib_anchor: bool = False  # naming.rib_anchor: name CT vertebrae from the last rib-bearing one (module docstring)
    lowest_level_in_view: bool = False  # naming.lowest_level_in_view: a short unbroken chain is named up from the lowest level (module docstring)
    leave_out_beyond_levels: bool = False  # naming.leave_out_beyond_levels: vertebrae named beyond the card's levels are left out (module docstring)
    picture_field_of_view: tuple[float, tuple[float, float]] | None = None  # input.picture_field_of_view_mm: typical mm, (low, high) px (``preparation`` decision 5)
    radiograph: RadiographInput | None = None  # input.radiograph: an AP X-ray's pixel size, polarity and scale checks (module docstring)
    schema_version: int = CARD_SCHEMA_VERSION
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def weights_path(self) -> Path:
        return self.path.parent / self.weights_file

    @property
    def spatial_dims(self) -> int:
        """2: the network segments sagittal slices; 3: volume patches on an isotropic grid."""
        return int(self.network_config.get("spatial_dims", 2))

    @property
    def channels(self) -> tuple[int, ...] | None:
        """The network's widths per level, None where the card relies on the family's default."""
        channels = self.network_config.get("channels")
        return None if channels is None else tuple(int(c) for c in channels)

    @property
    def num_classes(self) -> int:
        """Output channels of the network (1: binary): the labels, and a gap channel where the card has one (``gap_channel``)."""
        return int(self.network_config.get("num_classes", 1))

    @property
    def split(self) -> dict:
        """The subjects (or images) trained on and held out: ``{"train": [...], "validation": [...]}``."""
        return dict(self.training.get("split") or {})

    @property
    def validation_cases(self) -> list[str]:
        return list(self.split.get("validation") or [])

    @property
    def trained_levels(self) -> list[str] | None:
        """The vertebral levels the training labels covered, top to bottom, when the card says."""
        return (self.training.get("label_scheme") or {}).get("levels")

    @property
    def training_config(self) -> dict | None:
        """The run config the model was trained with (``training.configs``), when recorded."""
        return self.training.get("config")

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
            return get_family(self.family_name)
        except VerdiffError as error:
            raise VerdiffError(f"model {self.name}: {error}") from None

    def summary(self) -> str:
        labels = "; ".join(f"{label['name']} ({label['covers']})" for label in self.labels)
        variant = "  3D" if self.spatial_dims == 3 else (f"  2.5D (+-{self.context_slices} slices)" if self.context_slices else "")
        return f"{self.name}  v{self.version}  {self.family_name}{variant}  {self.modality}  labels: {labels}"

    def derived(self, **changes) -> "ModelCard":
        """A copy of this card with top-level JSON sections replaced (e.g. ``scheduler=...``),
        parsed and checked like any card: how benchmarks try other sampling settings."""
        return parse_card({**copy.deepcopy(self.raw), **changes}, self.path)


def parse_card(data: dict, path: Path) -> ModelCard:
    """Check a card's JSON and build the ``ModelCard``; any problem is one ``VerdiffError``
    naming the card and the field."""

    def fail(message: str):
        raise VerdiffError(f"model card {path}: {message}")

    if not isinstance(data, dict):
        fail("is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise VerdiffError(f"model card {path} lacks {', '.join(missing)}")
    schema = data.get("schema_version", 1)
    if not isinstance(schema, int) or schema < 1:
        fail(f"schema_version must be a positive integer, got {schema!r}")
    if schema > CARD_SCHEMA_VERSION:
        fail(f"schema_version {schema} is newer than this VerdiffSegment reads ({CARD_SCHEMA_VERSION}); update VerdiffSegment")
    for key in ("network", "input", "defaults"):
        if not isinstance(data[key], dict):
            fail(f"{key} must be an object")
    if data["modality"] not in MODALITIES:
        fail(f"modality must be one of {', '.join(MODALITIES)}, got {data['modality']!r}")
    labels = data["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(label, dict) and {"value", "name"} <= set(label) for label in labels):
        fail("labels must be a non-empty list of objects with a value and a name")
    sha256 = str(data["sha256"])  # checked against the weights when they load (``load_network``)
    source = data["input"]
    try:
        spacing = float(source["spacing_mm"])
        normalisation = dict(source["normalisation"])
        bias_field_of(normalisation, "input.normalisation")
        patch = source.get("patch_size")
        patch_size = None if patch is None else tuple(int(n) for n in patch)
        steps, ensemble = int(data["defaults"]["steps"]), int(data["defaults"]["ensemble"])
        warning = (data.get("reliability") or {}).get("self_dice_warning")
        warning = None if warning is None else float(warning)
        share = (data.get("reliability") or {}).get("min_vertebrae_share")
        share = None if share is None else float(share)
        if share is not None and not 0 < share <= 1:
            raise ValueError(f"reliability.min_vertebrae_share must lie in (0, 1], got {share}")
        acquired_threshold = (data.get("postprocess") or {}).get("acquired_slice_threshold")
        if acquired_threshold is not None and (isinstance(acquired_threshold, bool) or not isinstance(acquired_threshold, (int, float))
                                               or not 0.5 <= acquired_threshold < 1):
            raise ValueError(f"postprocess.acquired_slice_threshold must be a probability in [0.5, 1), got {acquired_threshold!r}")
        context = source.get("context_slices", 0)
        in_channels = data["network"].get("in_channels", 1)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (context, in_channels)):
            raise TypeError(f"input.context_slices and network.in_channels must be integers, got {context!r} and {in_channels!r}")
        context_distance = checked_context_distance(source.get("context_distance_mm"), "input.context_distance_mm")
        edge_padding = source.get("edge_padding_px", 0)
        if isinstance(edge_padding, bool) or not isinstance(edge_padding, int) or edge_padding < 0:
            raise ValueError(f"input.edge_padding_px must be a whole number of pixels, 0 or more, got {edge_padding!r}")
        edge_padding_sides = source.get("edge_padding_sides", "all")
        tile = source.get("tile_px")
        tile_padding = source.get("tile_padding", "none")
        if tile_padding not in TILE_PADDINGS:
            raise ValueError(f"input.tile_padding must be one of {', '.join(TILE_PADDINGS)}, got {tile_padding!r}")
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0 or tile % int(source.get("pad_multiple", 8))):
            raise ValueError(f"input.tile_px must be a whole number of pixels, a multiple of input.pad_multiple, got {tile!r}")
        radiograph = None if source.get("radiograph") is None else RadiographInput.from_card(source["radiograph"])
        picture_field_of_view = checked_picture_field_of_view(source.get("picture_field_of_view_mm"))
        if edge_padding_sides not in EDGE_PADDING_SIDES:
            raise ValueError(f"input.edge_padding_sides must be one of {', '.join(EDGE_PADDING_SIDES)}, got {edge_padding_sides!r}")
        planar = source.get("planar_model")
        if planar is not None and not (isinstance(planar, str) and planar):
            raise TypeError(f"input.planar_model must be a model name, got {planar!r}")
        view = source.get("view", "sagittal")
        if view not in VIEWS:
            raise ValueError(f"input.view must be one of {', '.join(VIEWS)}, got {view!r}")
        gap_channel = (data.get("separation") or {}).get("gap_channel")
        if gap_channel is not None and (isinstance(gap_channel, bool) or not isinstance(gap_channel, int)):
            raise TypeError(f"separation.gap_channel must be an integer, got {gap_channel!r}")
        extra_vertebrae = (data.get("naming") or {}).get("extra_vertebrae", "above")
        if extra_vertebrae not in EXTRA_VERTEBRAE:
            raise ValueError(f"naming.extra_vertebrae must be one of {', '.join(EXTRA_VERTEBRAE)}, got {extra_vertebrae!r}")
        level_map = (data.get("naming") or {}).get("level_map")
        if level_map is not None:
            level_map = _checked_level_map(level_map)
        tilt_network = (data.get("cobb") or {}).get("tilt_network")
        if tilt_network is not None:
            tilt_network = _checked_tilt_network(tilt_network)
        estimate_missing_ends = (data.get("cobb") or {}).get("estimate_missing_ends", False)
        if not isinstance(estimate_missing_ends, bool):
            raise TypeError(f"cobb.estimate_missing_ends must be true or false, got {estimate_missing_ends!r}")
        if estimate_missing_ends and tilt_network is None:
            raise ValueError("cobb.estimate_missing_ends needs cobb.tilt_network (the tilts are read from the picture)")
        outline_network = (data.get("outline") or {}).get("network")
        if outline_network is not None:
            outline_network = _checked_patch_network(outline_network, "outline.network")
        level_network = (data.get("naming") or {}).get("level_network")
        if level_network is not None:
            level_network = _checked_level_network(level_network)
        strip_network = (data.get("naming") or {}).get("strip_network")
        if strip_network is not None:
            strip_network = _checked_level_network(strip_network, "naming.strip_network")
            hidden = data["naming"]["strip_network"]["network"].get("hidden", 64)
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"naming.strip_network.network.hidden must be a positive whole number, got {hidden!r}")
            strip_network["network"]["hidden"] = hidden
            if level_network is None:
                raise ValueError("naming.strip_network needs naming.level_network (its names are united with the level network's)")
        rib_anchor = (data.get("naming") or {}).get("rib_anchor", False)
        if not isinstance(rib_anchor, bool):
            raise TypeError(f"naming.rib_anchor must be true or false, got {rib_anchor!r}")
        lowest_level_in_view = (data.get("naming") or {}).get("lowest_level_in_view", False)
        if not isinstance(lowest_level_in_view, bool):
            raise TypeError(f"naming.lowest_level_in_view must be true or false, got {lowest_level_in_view!r}")
        leave_out_beyond_levels = (data.get("naming") or {}).get("leave_out_beyond_levels", False)
        if not isinstance(leave_out_beyond_levels, bool):
            raise TypeError(f"naming.leave_out_beyond_levels must be true or false, got {leave_out_beyond_levels!r}")
    except (KeyError, TypeError, ValueError) as error:
        fail(f"input or defaults are malformed ({type(error).__name__}: {error})")
    if not spacing > 0:
        fail(f"input.spacing_mm must be positive, got {spacing}")
    if steps < 0 or ensemble < 1:
        fail(f"defaults must have steps >= 0 and ensemble >= 1, got {steps} and {ensemble}")
    if context < 0:
        fail(f"input.context_slices must be 0 or more (neighbouring slices on each side), got {context}")
    if in_channels != 1 + 2 * context:
        fail(f"network.in_channels is {in_channels} but input.context_slices {context} needs {1 + 2 * context} (the slice and {context} neighbour(s) on each side)")
    if context_distance is not None and not context:
        fail("input.context_distance_mm is for 2.5D cards (input.context_slices > 0)")
    if planar is not None and not context:
        fail("input.planar_model is for 2.5D cards (input.context_slices > 0): a 1-channel model segments single slices itself")
    if view != "sagittal" and (int(data["network"].get("spatial_dims", 2)) != 2 or data["modality"] == "XR"):
        fail("input.view is for 2D cards of volumes (CT, MR): a 3D network sees every plane, a radiograph has one")
    if gap_channel is not None and (len(labels) != 1 or gap_channel != 1 or int(data["network"].get("num_classes", 1)) != 2):
        fail(f"separation.gap_channel is for a binary label with the gaps as the second of the network's 2 outputs (gap_channel 1, num_classes 2), got gap_channel {gap_channel}")
    if context and int(data["network"].get("spatial_dims", 2)) != 2:
        fail("input.context_slices is for 2D (sagittal-slice) networks; a 3D network sees the neighbouring slices already")
    if edge_padding and int(data["network"].get("spatial_dims", 2)) != 2:
        fail("input.edge_padding_px is for 2D (sagittal-slice) networks")
    if tile is not None and int(data["network"].get("spatial_dims", 2)) != 2:
        fail("input.tile_px is for 2D (sagittal-slice) networks; a 3D card's windows are input.patch_size")
    return ModelCard(
        path=Path(path),
        name=str(data["name"]),
        family_name=str(data["family"]),
        version=str(data["version"]),
        modality=data["modality"],
        weights_file=str(data["weights"]),
        sha256=sha256,
        labels=[dict(label) for label in labels],
        network_config=dict(data["network"]),
        spacing_mm=spacing,
        normalisation=normalisation,
        patch_size=patch_size,
        default_steps=steps,
        default_ensemble=ensemble,
        scheduler_config=dict(data.get("scheduler") or {}),
        postprocess=dict(data.get("postprocess") or {}),
        self_dice_warning=warning,
        training=dict(data.get("training") or {}),
        validation=dict(data.get("validation") or {}),
        context_slices=context,
        context_distance_mm=context_distance,
        edge_padding=edge_padding,
        edge_padding_sides=edge_padding_sides,
        tile=tile,
        tile_padding=tile_padding,
        min_vertebrae_share=share,
        planar_model=planar,
        view=view,
        gap_channel=gap_channel,
        extra_vertebrae=extra_vertebrae,
        level_map=level_map,
        tilt_network=tilt_network,
        outline_network=outline_network,
        estimate_missing_ends=estimate_missing_ends,
        level_network=level_network,
        strip_network=strip_network,
        rib_anchor=rib_anchor,
        lowest_level_in_view=lowest_level_in_view,
        leave_out_beyond_levels=leave_out_beyond_levels,
        radiograph=radiograph,
        picture_field_of_view=picture_field_of_view,
        schema_version=schema,
        raw=data,
    )


def _checked_level_map(entry) -> dict:
    """``naming.level_map`` with its types checked (``parse_card`` turns errors into the card's)."""
    if not isinstance(entry, dict) or not {"weights", "sha256", "network", "box"} <= set(entry):
        raise ValueError("naming.level_map must be an object with weights, sha256, network and box")
    box = [int(n) for n in entry["box"]]
    channels = [int(n) for n in entry["network"]["channels"]]
    if len(box) != 2 or min(box) < 1 or any(n % 2 ** (len(channels) - 1) for n in box):
        raise ValueError(f"naming.level_map.box must be 2 sizes divisible by {2 ** (len(channels) - 1)}, got {entry['box']}")
    return {"weights": str(entry["weights"]), "sha256": str(entry["sha256"]), "network": {"channels": channels}, "box": box}


def read_card(path: Path) -> ModelCard:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VerdiffError(f"cannot read model card {path}: {error}") from None
    return parse_card(data, Path(path))


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


def _checked_patch_network(entry, place: str) -> dict:
    """A patch network's card entry (``place``: where the card holds it) with its ``weights``,
    ``sha256`` and positive ``network.channels`` checked (``parse_card`` turns errors into the card's)."""
    if not isinstance(entry, dict) or not {"weights", "sha256", "network"} <= set(entry):
        raise ValueError(f"{place} must be an object with weights, sha256 and network")
    channels = [int(n) for n in entry["network"]["channels"]]
    if not channels or min(channels) < 1:
        raise ValueError(f"{place}.network.channels must be positive, got {entry['network']['channels']}")
    return {"weights": str(entry["weights"]), "sha256": str(entry["sha256"]), "network": {"channels": channels}}


def _checked_tilt_network(entry) -> dict:
    """``cobb.tilt_network`` with its types checked."""
    return _checked_patch_network(entry, "cobb.tilt_network")


def _checked_level_network(entry, place: str = "naming.level_network") -> dict:
    """A level reader's entry (``naming.level_network``, ``naming.strip_network``) with its types
    checked, its ``network.levels`` too."""
    checked = _checked_patch_network(entry, place)
    levels = entry["network"].get("levels")
    if not isinstance(levels, list) or len(levels) < 2 or not all(isinstance(level, str) and level for level in levels):
        raise ValueError(f"{place}.network.levels must be a list of level names, got {levels!r}")
    checked["network"]["levels"] = list(levels)
    return checked


def _load_checked(path: Path, sha256: str, what: str, build) -> torch.nn.Module:
    """Check a weights file's sha256, then ``build()`` the network and load them into it
    (``weights_only``); any failure is one ``VerdiffError`` naming ``what``."""
    if not path.is_file():
        raise VerdiffError(f"weights of {what} not found: {path}")
    if sha256_of(path) != sha256:
        raise VerdiffError(f"weights of {what} do not match the sha256 in its card ({path.name} was changed or damaged)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Weights may be shipped in fp16 (half the file); the networks compute in float32.
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        network = build()
        network.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - any failure here means unusable weights
        raise VerdiffError(f"weights of {what} cannot be loaded: {type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    return network


def _load_helper(card: ModelCard, entry: dict | None, what: str, build, device) -> torch.nn.Module | None:
    """A helper network the card names in ``entry`` (weights, sha256, network), checked like the
    card's weights (``_load_checked``) and built by ``build(entry["network"])``; None without one."""
    if entry is None:
        return None
    network = _load_checked(card.path.parent / entry["weights"], entry["sha256"], f"the {what} of model {card.name}", lambda: build(entry["network"]))
    return network.to(device).eval()


def load_level_map(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The card's level-map network (``naming.level_map``), checked like the card's weights; None without one."""
    from .networks import UNetBaseline

    network = _load_helper(card, card.level_map, "level map", lambda entry: UNetBaseline(1, 1, entry["channels"]), device)
    if network is not None:
        network.box = tuple(card.level_map["box"])
    return network


def load_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Check the weights' sha256 against the card, then build the family's network and load them."""
    network = _load_checked(card.weights_path, card.sha256, f"model {card.name}", lambda: card.family.network(**card.network_config))
    # channels-last: oneDNN's convolutions run 10-25 % faster on it than on NCHW (measured on
    # the bundled networks, CPU); the inputs are made channels-last by the sampler. The 3D
    # networks' 5D weights take its volume form.
    return network.to(device, memory_format=memory_layout(card.spatial_dims)).eval()


def make_scheduler(card: ModelCard):
    """The card's scheduler, or None for a deterministic family."""
    family = card.family
    return None if family.scheduler is None else family.scheduler(**card.scheduler_config)


def load_tilt_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The card's endplate-tilt network (``cobb.tilt_network``), checked like the card's weights; None without one."""
    from .endplate_tilt import EndplateTiltNetwork

    return _load_helper(card, card.tilt_network, "endplate-tilt network", lambda entry: EndplateTiltNetwork(entry["channels"]), device)


def load_outline_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The card's vertebra-outline network (``outline.network``), checked like the card's weights; None without one."""
    from .vertebra_outline import VertebraOutlineNetwork

    return _load_helper(card, card.outline_network, "vertebra-outline network", lambda entry: VertebraOutlineNetwork(entry["channels"]), device)


def load_level_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The card's vertebra-level network (``naming.level_network``), checked like the card's weights; None without one."""
    from .vertebra_level import VertebraLevelNetwork

    return _load_helper(card, card.level_network, "vertebra-level network", lambda entry: VertebraLevelNetwork(**entry), device)


def load_strip_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The card's spine-strip level reader (``naming.strip_network``), checked like the card's weights; None without one."""
    from .spine_strip import SpineStripNetwork

    return _load_helper(card, card.strip_network, "spine-strip network", lambda entry: SpineStripNetwork(**entry), device)
