"""One segment per vertebra, named by level where the level can be decided.

``name_vertebrae(labels, card)`` takes the label map on the input grid (what ``segment``
returns) and gives a label map with one value per vertebra (1..n, head to feet) and one
segment description per value (name, level, colour, height along the spine). The union of
the vertebrae is exactly the input's foreground (only the label values change), but for
vertebrae a card leaves out (step 4).

Method (the bundled models are binary, so the vertebrae are separated and then named):

1. **Instances.** Connected components of the foreground (face connectivity) on the
   input grid (components under 1 % of the largest are fragments). Where the card has a
   gap channel (``ModelCard.gap_channel``, the ``binary-gaps`` training scheme: the network
   also draws the gaps between neighbouring vertebrae), the components are those of the
   foreground without the gaps, and the gap voxels join their nearest vertebra at the end
   like fragments: a disc the binary channel filled still divides. Heights are measured
   along the *local* spine direction (from the centroid of the vertebra below to that of the
   one above, ``_local_spine_axes``), not the image's superior axis: a tilted body in a
   scoliotic spine is much taller in the picture's vertical than along the spine. A
   component taller than 1.6 typical heights (the median component's; with fewer than four
   substantial components, as in CT where whole vertebrae touch at the facet joints, the repeat
   length of the cross-section profile along the spine: a median of three, one of them a merged
   chain, is one piece's height, and VB3_49's L1 taller than its disc-bridged neighbours made
   their chain of four read as three, session 15) holds merged neighbours: it is cut across
   its own principal axis (within 30 degrees of the local spine direction: a curved chain)
   or else across the local spine direction (a merged pair wider than tall, as MR's L4-L5)
   into round(height / typical) pieces at the narrowest sections, or at equal lengths when
   it is over twice the typical height and shows no narrowing; where exactly one narrowing is
   missing, the longest part left between the others, if over twice the typical height, is
   cut in equal lengths too (a disc drawn as bone inside a chain whose other discs narrow it:
   VB3_49 under the GPU-trained MR model; with more missing, equal lengths over long stretches
   misplaced the chest CT's upper thoracic cuts and one name, session 15)
   (``_split``). Pieces under a quarter of the typical
   piece are *fragments*; the others are seeds, and every foreground voxel, fragments
   included, goes to its nearest seed (Euclidean, in mm), so nothing is dropped. In a
   volume, pieces side by side at one level (a rotated body that the sagittal slices show
   in a left and a right part) are one seed (``_side_by_side_seeds``).
2. **Order.** Instances are sorted by their centroid along the superior direction taken
   from the image's direction matrix (LPS +z for volumes; the top row of a 2D picture for
   X-rays, whose headers carry no orientation), never by array order.
3. **Naming.** The card says which levels its model segments (``training.label_scheme.levels``;
   MR: L1-L5 bodies, X-ray: T1-L5 bodies, CT: whole vertebrae C1-L5). A binary model's
   only anchor is the bottom of its range: its lowest level (L5) is the lowest vertebra it
   segments, since none of the models segments the sacrum (on the lumbar MR cards only while
   the lowest piece stays clear of the picture's inferior edge: ``cut_at_the_feet``). So when at least as many
   vertebrae were found as the card has levels, they are named bottom-up from L5, and any
   extra ones above continue upwards (T12, T11, ...; the MR model often also finds T12).
   On a card whose images can show vertebrae below its range (``naming.extra_vertebrae``
   "either", below), a lowest piece under half the median vertebra is below the range (the
   top of S1, ``below_the_range``): unnamed and not counted. A card whose images can show extra
   vertebrae below its range as well as above (``naming.extra_vertebrae`` "either": the
   X-ray model at times draws the whole top of S1 under L5) is named only when exactly its
   count is found: with 18 pieces nothing tells C7 above from S1 below, and a guess shifts
   all 17 names (measured in docs/levels.md).
   With fewer, a vertebra is missing or two are merged and nothing tells which: ``level``
   is None and the segments are "vertebral body 1..n" / "vertebra 1..n", top-down. A
   multi-class card (one label per level) names each label directly.
   A card with a level network (``naming.level_network``, the X-ray cards: a network that
   reads each piece's level, C7..S1, from a tall patch of the radiograph around it,
   ``vertebra_level``) names the pieces from it where the count names nothing: the likeliest
   strictly increasing chain of levels down the spine (``levels_from_log_probabilities``;
   neighbouring pieces may share a level, and then become one vertebra: two pieces of one
   broken body), each name kept only where its posterior probability on the chain is at
   least 0.9. Chosen on the bundled X-ray model's pieces of the 48 held-out radiographs
   among 400 settings (temperature, repeat, threshold, the level map after it or not, the
   count first or not) by named right minus named wrong, one wrong name costing what one
   right name gains (a wrong level is the error a surgeon cannot see): 68 % right and 9 %
   wrong against 57 % and 10 % for count then level map; chosen on one half of the images
   and measured on the other, 64 % and 9.5 % (docs/levels.md, session 10). Where it names
   nothing either, the level map does.
   A card with a level map (``naming.level_map``, the X-ray cards: a network that sees the
   whole radiograph and gives each pixel its position along the spine in levels,
   ``level_map``) names the vertebrae from it where the count names nothing: each vertebra
   by its median coordinate, the names strictly increasing down the spine
   (``levels_from_coordinates``), so an extra piece (the top of S1, named S1) or a merged
   pair no longer leaves the whole spine unnamed. The count goes first because, where it
   applies, it is the surer of the two: on the truth masks (always 17 pieces) it names
   94 % right against 54 % for the map alone; on the X-ray model's output the map alone
   named 52 % right and 8.7 % wrong, count first then map 57 % and 10 % (docs/levels.md,
   session 7).

   A card with the rib anchor (``naming.rib_anchor``, the CT card) names the pieces where the
   count names nothing from the ribs read in the CT's Hounsfield units (``ribs``): the lowest
   rib-bearing piece above two without ribs is T12, the others counted from it
   (``levels_from_ribs``; a piece with two rib pairs and two vertebrae's height is first cut in
   two, ``_split_two_rib_pairs``; above the ribs found, pieces without ribs, T1-T2 and the
   cervical spine, are counted up one by one while their steps and heights say one vertebra
   each, ``one_vertebra_above``); without the thoracolumbar junction in view, a lowest piece
   that meets both iliac wings is S1 and the pieces are counted up from it
   (``levels_from_sacrum``; L5 merged with S1 is first cut in two, ``_split_sacrum``); with
   neither anchor in view nothing is named.

   Why: the MR model is trained on L1-L5 bodies and does not segment the sacrum, the X-ray
   landmarks always run T1-L5 (17). A CT field of view holds any run of levels and a
   binary whole-vertebra model has no anchor of its own (it segments no sacrum), so CT is
   named by the count only when all 24 C1-L5 are found; the ribs are the anchor a
   radiologist uses (session 13, docs/levels.md). The
   measured alternative "name only when the count is exactly the card's" named 30 % of
   the held-out MR bodies right against 80 % for this rule (docs/levels.md).
4. **Beyond the card's levels** (``naming.leave_out_beyond_levels``: the AP X-ray cards). A
   piece named outside the levels the card's label covers (C7 or S1 on a radiograph labelled
   T1-L5) is left out of the label map and listed apart: the model was trained to call it
   background, so it is outside what its label means. Measured on the 48 held-out radiographs
   (session 16): 8 pieces named C7 or S1 go, 7 of them rightly, binary Dice 0.7936 -> 0.7952.
   Unnamed pieces stay: nothing says they lie beyond. The lumbar MR cards keep a T12: it gains
   0.006 Dice on the VB3 subjects (labels L1-L5) but costs 0.056 on the clinical sagittal slices,
   whose masks hold every body in view (``models`` module docstring); CT keeps every vertebra.

Measured (``benchmarks/levels_accuracy.py``, docs/levels.md): the naming step alone on the
ground-truth masks (union of the truth levels -> this module -> compared with the truth
levels) and on the bundled models' outputs of the held-out cases; see docs/levels.md for
the figures.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from .metrics import grown_bounding_box
from .terminology import is_body_label, level_display_color, terminology_for_label

# Level names in cranio-caudal order (the same list as training.labels.LEVELS).
LEVELS = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["T13"] + [f"L{i}" for i in range(1, 7)] + ["S1", "sacrum"]

FRAGMENT_SHARE = 0.25  # of the typical vertebra's voxels: smaller components join their nearest vertebra
SUBSTANTIAL_SHARE = 0.1  # ``separate_instances``: a piece of this share of the largest counts towards "the spine in one or two pieces"
MERGED_HEIGHT = 1.6  # typical heights (vertebra + disc): a taller component holds merged neighbours
PERIOD_PERCENTILE = 50
NECK_DEPTH = 0.7  # a cut needs a section this much narrower than the widest on both sides
CHAIN_AXIS_DEGREES = 30.0  # a merged piece is cut across its principal axis when within this of the local spine direction
SIDE_BY_SIDE_OVERLAP = 0.5  # of the shorter piece's extent along the spine: pieces overlapping more ...
SIDE_BY_SIDE_OFFSET = 0.35  # ... with centres closer than this many typical heights along it are one vertebra
CHAIN_GAP = 1.5  # median centre spacings: a wider step between neighbours is a vertebra missed inside the chain (``levels_of_a_short_chain``)
BELOW_RANGE_SHARE = 0.5  # of the median vertebra's voxels: a smaller lowest piece is below the card's range (``below_the_range``)
SKIP_PROBABILITY = 0.05  # of skipping one level between neighbouring pieces (``levels_from_log_probabilities``)
REPEAT_PROBABILITY = 0.05  # of two neighbouring pieces being one vertebra (``levels_from_log_probabilities``)
MIN_LEVEL_CONFIDENCE = 0.9  # posterior probability a piece's level needs to be named (``levels_from_log_probabilities``)
LEVEL_TEMPERATURE = 2.0  # the level network's log-probabilities are divided by it (``levels_from_log_probabilities``)
UNITED_LEAST_SHARED = 3  # pieces two level readers must name alike before their names are united (``united_names``)
EQUAL_CUT_HEIGHT = 2.0  # typical heights: a piece this long without a narrowing is cut into equal lengths  # of the component heights: the typical height, robust to merged blobs

# Vertebrae whose level is not decided have no terminology colour: two shades alternating
# top-down, so that neighbours differ.
_UNNAMED_COLORS = ((0.9, 0.85, 0.5), (0.6, 0.75, 0.45))


def level_color(level: str | None, index: int) -> list[float]:
    """Colour of the vertebra ``index`` (0-based, top-down) with ``level`` (or None): Slicer's
    terminology colour for the level (``terminology.level_display_color``), else one of
    ``_UNNAMED_COLORS``."""
    return level_display_color(level) or [float(c) for c in _UNNAMED_COLORS[index % 2]]


# ------------------------------------------------------------------------- geometry


def superior_axis(image: sitk.Image) -> np.ndarray:
    """The head direction in numpy index order, scaled to mm per voxel step.

    Volumes: the LPS +z (superior) component of each index axis' physical step. 2D images
    (X-rays): up the picture (decreasing row); their headers carry no orientation."""
    dimension = image.GetDimension()
    steps = np.reshape(image.GetDirection(), (dimension, dimension)) * np.asarray(image.GetSpacing())  # column k: step of index k
    if dimension == 3:
        axis = steps[2]  # S component of each index axis' step
    else:
        axis = -steps[1]  # up the picture
    return axis[::-1].astype(float)  # numpy order (k, j, i)


def lateral_axis(image: sitk.Image) -> np.ndarray:
    """The left direction (LPS +x) component of each index axis' step, mm, numpy index order
    (a volume's; as ``superior_axis``)."""
    steps = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    return steps[0][::-1].astype(float)


def _spacing(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetSpacing(), float)[::-1]


def _physical(points: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Physical positions (mm, an orthonormal frame) of numpy-order indices [n, d]."""
    dimension = image.GetDimension()
    steps = np.reshape(image.GetDirection(), (dimension, dimension)) * np.asarray(image.GetSpacing())
    return points[:, ::-1] @ steps.T


# ------------------------------------------------------------------------ instances


def separate_instances(mask: np.ndarray, spacing: np.ndarray, superior: np.ndarray, gaps: np.ndarray | None = None) -> np.ndarray:
    """Instance map (int32, 0 = background, 1..n in no particular order) of a boolean mask.

    ``spacing``: mm per voxel in numpy order; ``superior``: the head direction per voxel
    step (``superior_axis``). ``gaps`` (boolean, the mask's shape; a card's gap channel):
    the components and pieces are taken from the mask without the gaps, and the gap voxels
    then join their nearest seed like fragments, so the union stays the mask. See the
    module docstring."""
    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, np.int32)
    if not mask.any():
        return out
    box = grown_bounding_box(mask, 1)
    crop = mask[box]
    core = crop & ~np.asarray(gaps, bool)[box] if gaps is not None else crop
    if not core.any():  # gaps everywhere: nothing to separate by
        core = crop
    components, count = ndi.label(core)
    sizes = np.bincount(components.ravel())[1:]
    objects = ndi.find_objects(components)
    candidates = [k + 1 for k in range(count) if sizes[k] >= 0.01 * sizes.max()]
    axes = _local_spine_axes(components, objects, candidates, sizes, spacing, superior)
    heights = {value: _extent_across(components[objects[value - 1]] == value, spacing, axes[value]) for value in candidates}
    period = float(np.percentile(list(heights.values()), PERIOD_PERCENTILE))
    # the spine in three pieces or fewer (CT: vertebrae touch at the facets); counted among the
    # pieces of at least a tenth of the largest, or two merged runs and a 94-voxel scrap (the
    # abdominal CT under the all-CT model) take their own heights as the period and stay merged
    if sum(sizes[value - 1] >= SUBSTANTIAL_SHARE * sizes.max() for value in candidates) < 4:
        period = _profile_period(core, superior) or period
    pieces = []  # (region, boolean mask within the region)
    for value, height in heights.items():
        region = objects[value - 1]
        piece = components[region] == value
        parts = _split(piece, spacing, axes[value], round(height / period), period) if height > MERGED_HEIGHT * period else [piece]
        pieces += [(region, part) for part in parts]
    piece_sizes = np.array([part.sum() for _, part in pieces])
    typical_size = float(np.median(piece_sizes[piece_sizes >= 0.05 * piece_sizes.max()]))
    kept = [piece for piece, size in zip(pieces, piece_sizes) if size >= FRAGMENT_SHARE * typical_size]
    values = _side_by_side_seeds(kept, spacing, period, superior)
    seeds = np.zeros(crop.shape, np.int32)
    for (region, part), value in zip(kept, values):
        seeds[region][part] = value
    out[box] = _to_nearest_seed(seeds, crop, spacing)  # fragments too
    return out


def _to_nearest_seed(seeds: np.ndarray, foreground: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Every ``foreground`` voxel given the value of its nearest seed (Euclidean, mm), 0 elsewhere."""
    _, nearest = ndi.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    return np.where(foreground, seeds[tuple(nearest)], 0)


CORE_RADII_MM = tuple(np.arange(2.0, 8.01, 0.5))  # ``separate_whole_vertebrae``: the depths tried for the vertebrae's cores
CORE_SHARE = 0.25  # of the largest core nearby along the spine: a smaller core is not a vertebra of its own
CORE_WINDOW = 1.15  # periods (vertebra + disc) along the spine: the cores nearby (1.5 of the 20 mm the chest CT's period read before session 27 smoothed the profile over a slice: the same 30 mm of its 26)


def separate_whole_vertebrae(mask: np.ndarray, spacing: np.ndarray, superior: np.ndarray) -> np.ndarray:
    """Instance map of a mask of whole vertebrae (body and posterior elements: the CT cards),
    like ``separate_instances``: each vertebra grown from its core.

    Whole vertebrae touch at the facet joints, so the foreground is one piece, and the cuts
    of ``separate_instances`` are planes across the spine: a plane cannot follow a spinous
    process that slopes down behind the next vertebra's body, nor a facet joint. What parts
    them is depth: a vertebral body is 13-30 mm thick, the bone that joins two vertebrae (the
    facets over a joint, a disc drawn in part) a few millimetres. So:

    1. The cores: the foreground more than r mm inside (Euclidean distance to the
       background, in mm), components of at least ``CORE_SHARE`` of the largest whose centre
       lies within ``CORE_WINDOW`` periods along the spine (vertebrae grow from C3 to L5, so
       a cervical body is judged against its neighbours, not the lumbar ones; a posterior
       element's core is small beside its own body's), for each r of ``CORE_RADII_MM`` (2-8 mm); the depth
       with the most cores is kept, the deepest of equals (one depth for the whole spine:
       the bodies' cores grow apart with depth at every level alike, while a posterior
       element's core is small against the bodies' at any depth). Cores side by side at one
       level are one vertebra (``_side_by_side_seeds``: a body the model draws in a left
       and a right half, as the chest-only CT model draws the held-out abdominal CT's T12
       and L1).
    2. Each core grows through the foreground one voxel step at a time, a step along an
       axis counted in mm (``_grow_within``: the CT's slices lie 2.5-3 mm apart against
       0.7 mm in plane), so every voxel joins the core it reaches first within the bone:
       a posterior element joins the body its pedicles lead to. Foreground no core reaches
       joins its nearest vertebra, like ``separate_instances``' fragments.

    Where the cores are fewer than ``separate_instances`` gives (a model that fills the
    discs: one core for several bodies), its planar cuts are kept.

    Measured on the two development CTs' truth masks through the rib naming (session 26,
    docs/levels.md): chest (C5-L3, 0.7 x 0.7 x 2.5 mm) level Dice 0.432 -> 0.651, 9 -> 13
    of 18 named right, 3 -> 0 wrong, separated one to one 61 -> 94 %; abdomen (T11-S1, 3 mm)
    0.801 -> 0.839, 7 of 8 right both; the chest-only model on the held-out abdominal CT
    0.514 -> 0.505, the same names. Depths of 4 mm (chest) and 8 mm (abdomen) are chosen.
    At the chest CT's top (C5-T2) the pieces still mix neighbours, and the ribs name
    nothing above T3 there, as before."""
    mask = np.asarray(mask, bool)
    planar = separate_instances(mask, spacing, superior)
    if not mask.any():
        return planar
    box = grown_bounding_box(mask, 1)
    crop = mask[box]
    depth = ndi.distance_transform_edt(crop, sampling=spacing)
    head = _head_direction(superior, spacing)
    period = _profile_period(crop, superior)
    window = CORE_WINDOW * period if period else np.inf
    position = sum(np.arange(n).reshape([-1 if a == axis else 1 for a in range(crop.ndim)]) * spacing[axis] * head[axis] for axis, n in enumerate(crop.shape))
    position = np.broadcast_to(position, crop.shape)
    best = None  # (cores, core map)
    for radius in CORE_RADII_MM:
        components, count = ndi.label(depth > radius)
        if count == 0:
            break
        sizes = np.bincount(components.ravel())[1:]
        along = np.bincount(components.ravel(), weights=position.ravel())[1:] / sizes  # each core's centre along the spine, mm
        largest_near = [sizes[np.abs(along - along[k]) <= window].max() for k in range(count)]  # itself included
        kept = np.flatnonzero((sizes >= CORE_SHARE * np.array(largest_near)) & (sizes >= 0.01 * sizes.max())) + 1  # scraps alone are no vertebra
        if best is None or len(kept) >= best[0]:
            lookup = np.zeros(count + 1, np.int32)
            lookup[kept] = np.arange(1, len(kept) + 1)
            best = (len(kept), lookup[components])
    if best is None or best[0] < len(np.unique(planar)) - 1:
        return planar
    cores = best[1]
    regions = ndi.find_objects(cores)
    period = period or float(np.median([_extent_across(cores[r] == v + 1, spacing, head) for v, r in enumerate(regions)]))
    joined = _side_by_side_seeds([(r, cores[r] == v + 1) for v, r in enumerate(regions)], spacing, period, superior)
    seeds = _grow_within(np.concatenate([[0], joined]).astype(np.int32)[cores], crop, spacing)
    out = np.zeros(mask.shape, np.int32)
    out[box] = _to_nearest_seed(seeds, crop, spacing)  # foreground no core reaches
    return out


def _grow_within(seeds: np.ndarray, allowed: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Seeds (int, 0 = none) grown into ``allowed`` voxels one step at a time until nothing
    is left to reach; each step covers the smallest spacing, so an axis with a larger spacing
    is stepped along only every spacing / smallest steps (distances in mm, not voxels)."""
    spacing = np.asarray(spacing, float)
    covered = stalled = 0.0
    while stalled <= spacing.max():  # every axis stepped along once without reaching anything: done
        covered += spacing.min()
        # an axis is stepped along when the distance covered passes its next multiple of its spacing
        size = tuple(3 if np.floor(covered / s + 1e-9) > np.floor((covered - spacing.min()) / s + 1e-9) else 1 for s in spacing)
        grown = ndi.grey_dilation(seeds, size=size)
        new = (seeds == 0) & allowed & (grown > 0)
        stalled = 0.0 if new.any() else stalled + spacing.min()
        seeds = np.where(new, grown, seeds)
    return seeds


def _side_by_side_seeds(pieces, spacing: np.ndarray, period: float, superior: np.ndarray) -> list[int]:
    """Seed value (1..) per piece (region, mask): pieces side by side at one
    level share one. Two pieces whose extents along the head direction (``superior``, not the
    local axis: that runs from one part to the other when they are neighbours in the chain)
    overlap by more than
    ``SIDE_BY_SIDE_OVERLAP`` of the shorter and whose centres lie less than
    ``SIDE_BY_SIDE_OFFSET`` typical heights (``period``) apart along it are one vertebra cut
    across (a rotated or scoliotic body that the sagittal slices show in two parts, left and
    right), since vertebrae are stacked along the spine, never beside one another. Volumes
    only: on the 48 held-out X-rays' truth masks the rule joined neighbours (named right
    95.6 -> 72.6 %), and a picture has no left-right slices to cut a body in two: 2D pieces
    keep a value each."""
    if pieces and pieces[0][1].ndim != 3:
        return list(range(1, len(pieces) + 1))
    head = _head_direction(superior, spacing)
    spans, centres = [], []
    for region, part in pieces:
        along = ((np.argwhere(part) + [r.start for r in region]) * spacing) @ head
        spans.append((float(along.min()), float(along.max())))
        centres.append(float(along.mean()))
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            overlap = min(spans[i][1], spans[j][1]) - max(spans[i][0], spans[j][0])
            shorter = min(spans[i][1] - spans[i][0], spans[j][1] - spans[j][0])
            if shorter > 0 and overlap > SIDE_BY_SIDE_OVERLAP * shorter and abs(centres[i] - centres[j]) < SIDE_BY_SIDE_OFFSET * period:
                parent[root(j)] = root(i)
    roots = sorted({root(i) for i in range(len(pieces))})
    return [roots.index(root(i)) + 1 for i in range(len(pieces))]


def _profile_period(mask: np.ndarray, superior: np.ndarray) -> float | None:
    """The repeat length (mm) of the cross-section profile along the superior direction:
    the first autocorrelation peak, vertebra plus disc; None when there is none.

    The profile (voxels per mm) is smoothed over at least one voxel step along ``superior``:
    a CT's slices 2.5 mm apart fill every second or third millimetre bin, a comb whose own
    peaks (5, 10 mm) came first on short fields of view (session 27: the chest CT cut to
    C7-T7 read 10 mm, not about 20, and was cut into 12 slabs for 9 vertebrae)."""
    coordinates = np.argwhere(mask) @ superior
    profile = np.bincount(np.floor(coordinates - coordinates.min()).astype(int)).astype(float)
    smoothing = max(1.5, float(np.linalg.norm(superior)))  # mm: the coarser of 1.5 mm and a voxel step
    profile = ndi.gaussian_filter1d(profile, smoothing) - ndi.gaussian_filter1d(profile, 40.0)  # keep the vertebra-scale ripple
    correlation = np.correlate(profile, profile, mode="full")[len(profile) - 1 :]
    peaks = [lag for lag in range(8, len(correlation) - 1) if correlation[lag - 1] < correlation[lag] >= correlation[lag + 1] and correlation[lag] > 0]
    return float(peaks[0]) if peaks else None


def _local_spine_axes(components, objects, candidates, sizes, spacing, superior) -> dict[int, np.ndarray]:
    """Per component (value -> unit vector, mm, numpy order, pointing to the head) the
    local spine direction: from the centroid of the next vertebra below to that of the
    next one above (one-sided at the ends), among the components of at least
    ``FRAGMENT_SHARE`` of the median size (a fragment takes its nearest one's direction).

    Why: heights and cuts along the image's superior axis overstate tilted bodies in a
    scoliotic spine (a 40 degree tilted lumbar body is 1.8 of its height tall in the
    picture's vertical) and a merged chain's principal axis can run across the spine (a
    merged L4-L5 in MR is wider than tall)."""
    head = _head_direction(superior, spacing)
    centroids = {value: (np.argwhere(components[objects[value - 1]] == value) + [r.start for r in objects[value - 1]]).mean(axis=0) * spacing for value in candidates}
    median = float(np.median([sizes[value - 1] for value in candidates]))
    chain = sorted((v for v in candidates if sizes[v - 1] >= FRAGMENT_SHARE * median), key=lambda v: -(centroids[v] @ head))
    axes = {}
    for index, value in enumerate(chain):
        if len(chain) < 2:
            axes[value] = head
            continue
        above, below = chain[max(index - 1, 0)], chain[min(index + 1, len(chain) - 1)]
        axis = centroids[above] - centroids[below]
        axes[value] = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 0 else head
    for value in candidates:
        if value not in axes:
            nearest = min(chain, key=lambda v: np.linalg.norm(centroids[v] - centroids[value])) if chain else None
            axes[value] = axes[nearest] if nearest is not None else head
    return axes


def _extent_across(piece: np.ndarray, spacing: np.ndarray, axis: np.ndarray) -> float:
    """Extent (mm) of a boolean mask along the unit vector ``axis`` (mm, numpy order), one
    voxel's extent included."""
    coordinates = (np.argwhere(piece) * spacing) @ axis
    return float(coordinates.max() - coordinates.min() + (np.abs(axis) * spacing).sum())


def _split(piece: np.ndarray, spacing: np.ndarray, long_axis: np.ndarray, expected: int, period: float,
           equal_cut_height: float = EQUAL_CUT_HEIGHT) -> list[np.ndarray]:
    """Split a component holding ``expected`` merged vertebrae across ``long_axis`` (its
    local spine direction, a unit vector in mm, numpy order: ``_local_spine_axes``) at the
    ``expected - 1`` deepest minima of its cross-section profile (voxels per mm along that
    axis, smoothed over a tenth of a ``period``), minima at least half a period apart: the
    discs (or the thin bridges over them) are where the section narrows. Without such a
    minimum (a disc segmented as bone) the piece is cut into equal lengths when it is over
    ``equal_cut_height`` periods long (0: always, where other evidence says how many it holds)."""
    positions = np.argwhere(piece) * spacing
    centred = positions - positions.mean(axis=0)
    # A chain of several bodies (lordosis, scoliosis) is cut across its own principal axis
    # when that runs along the spine; a merged pair can be wider than tall: then the spine's.
    principal = np.linalg.svd(centred[:: max(len(centred) // 20000, 1)], full_matrices=False)[2][0]
    if abs(principal @ long_axis) >= np.cos(np.radians(CHAIN_AXIS_DEGREES)):
        long_axis = principal
    coordinates = centred @ long_axis
    bins = np.floor(coordinates - coordinates.min()).astype(int)
    profile = ndi.gaussian_filter1d(np.bincount(bins).astype(float), max(period / 10, 1.0))
    order = np.argsort(profile)
    cuts: list[int] = []
    for position in order:
        if position < period / 2 or position > len(profile) - 1 - period / 2:
            continue  # not within half a vertebra of either end
        if not (profile[max(position - 1, 0)] >= profile[position] <= profile[min(position + 1, len(profile) - 1)]):
            continue  # not a local minimum
        if profile[position] > NECK_DEPTH * min(profile[:position].max(), profile[position + 1 :].max()):
            continue  # too shallow: a tilted or wedge-shaped vertebra, not a gap between two
        if all(abs(position - cut) >= period / 2 for cut in cuts):
            cuts.append(int(position))
        if len(cuts) == expected - 1:
            break
    if not cuts and len(profile) > equal_cut_height * period:  # no narrowing (a disc segmented as bone)
        cuts = [int(round(len(profile) * k / expected)) for k in range(1, expected)]
    elif cuts and len(cuts) == expected - 2:  # one narrowing missing: the longest part, if two long, holds two bodies
        ends = [0, *sorted(cuts), len(profile)]
        start, stop = max(zip(ends[:-1], ends[1:]), key=lambda part: part[1] - part[0])
        pieces_in = round((stop - start) / period)
        if stop - start > equal_cut_height * period and pieces_in > 1:
            cuts += [int(round(start + (stop - start) * k / pieces_in)) for k in range(1, pieces_in)]
    if not cuts:
        return [piece]
    slab = np.searchsorted(np.sort(cuts), bins)
    parts = []
    for k in range(len(cuts) + 1):
        part = np.zeros_like(piece)
        part[tuple(np.argwhere(piece)[slab == k].T)] = True
        parts.append(part)
    return parts


# --------------------------------------------------------------------------- naming


def card_levels(card) -> list[str] | None:
    """The levels a card's model segments, cranio-caudal (``training.label_scheme.levels``), or None."""
    levels = card.trained_levels
    return [level for level in LEVELS if level in levels] if levels else None


def structure_of(label: dict) -> str:
    """"vertebral body" or "vertebra", as the card label says."""
    return "vertebral body" if is_body_label(label) else "vertebra"


# The usual 24 presacral vertebrae: the names given above a card's levels (T13 and L6 are
# variants that a count cannot tell).
STANDARD_LEVELS = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
EXTENDED_LEVELS = STANDARD_LEVELS + ["S1"]  # a level map's coordinates reach one level past L5
MAP_AGREEMENT = 0.3  # levels: the most mean distance between a level map's medians and the names given (``levels_from_coordinates``)
MAP_STEP_TOLERANCE = 1.35  # the level map's median step between neighbouring pieces must lie within 1/1.35 .. 1.35 levels (``levels_from_coordinates``)
FEET_EDGE_MM = 2.0  # a lowest piece this close to the picture's inferior edge may be cut by it (``cut_at_the_feet``)


def levels_by_count(count: int, levels: list[str] | None, extra_vertebrae: str = "above") -> list[str | None]:
    """Level of each of ``count`` vertebrae (top-down): bottom-up from the card's lowest
    level when at least as many vertebrae were found as the card has levels (the extra
    ones above continue upwards: T12, T11, ...), else None for each (the decision is in the
    module docstring). ``extra_vertebrae`` "either" (the card's ``naming``: extra ones can
    lie below the range too, as the top of S1 on a radiograph): only exactly as many."""
    if not levels or count < len(levels) or levels[-1] not in STANDARD_LEVELS:
        return [None] * count
    if extra_vertebrae == "either" and count != len(levels):
        return [None] * count
    lowest = STANDARD_LEVELS.index(levels[-1])
    if count > lowest + 1:
        return [None] * count  # more vertebrae than there are above the lowest level
    return STANDARD_LEVELS[lowest + 1 - count : lowest + 1]


def levels_from_coordinates(coordinates: list[float], levels: list[str] | None) -> list[str | None]:
    """Level of each vertebra (top-down) from its median level coordinate (``level_map``:
    k at the centre of the card's k-th level, 1-based; 0 the level above its first, C7 above
    T1, and len(levels) + 1 the one below its last, S1 under L5).

    Decision: the levels are the strictly increasing sequence of whole coordinates nearest
    the medians (least total distance, by dynamic programming over the 0..len + 1 range), so
    two pieces of one vertebra or a map off by half a level in one place cannot give one
    name twice or names out of order; a level skipped between two pieces costs nothing (a
    merged pair or a missed vertebra). A piece whose median lies a whole level or more from
    its assigned level, or more pieces than levels, is left unnamed (None). Where the medians
    lie on average more than ``MAP_AGREEMENT`` of a level from their levels, the map and the
    separation disagree (a map off by about half a level, pieces that are not single
    vertebrae) and nothing is named: on the 48 held-out radiographs this kept 52 % of the
    vertebrae named right and cut the wrong names from 25 % to 9 % (docs/levels.md, session 7;
    chosen on those same images).
    Neighbouring pieces are neighbouring vertebrae but for a merge or a miss, so the map's
    median step between them must be about one level (within ``MAP_STEP_TOLERANCE``), else
    nothing is named: the map reads the whole picture as an AASCE radiograph, T1 at its top and
    L5 at its bottom, and on a film that shows part of the spine (a lumbar AP) it stretches its
    levels over the picture. On 16 held-out radiographs cut to start at the middle of T11 it
    named 55 % of the vertebrae wrong (T1, T3, T5 ... on L1-L5; median steps 1.2-2.3 levels),
    none with the check; of the 48 whole held-out radiographs one changes, its pieces half merged
    pairs (10 right and 7 wrong before, unnamed now; docs/levels.md, session 24)."""
    count = len(coordinates)
    if not levels or not count or levels[0] not in EXTENDED_LEVELS or levels[-1] not in EXTENDED_LEVELS:
        return [None] * count
    first = EXTENDED_LEVELS.index(levels[0])
    choices = np.arange(len(levels) + 2)  # coordinates 0 .. len + 1
    choices = choices[(first - 1 + choices >= 0) & (first - 1 + choices < len(EXTENDED_LEVELS))]
    if count > len(choices):
        return [None] * count
    medians = np.asarray(coordinates, float)
    if count >= 3 and not 1 / MAP_STEP_TOLERANCE <= float(np.median(np.diff(medians))) <= MAP_STEP_TOLERANCE:
        return [None] * count  # the map's scale is not the pieces': a picture that shows part of the spine
    distance = np.abs(medians[:, None] - choices[None, :])
    # total[i, j]: least cost of pieces 0..i with piece i at choices[j]; from: the j of piece i - 1
    total = np.full(distance.shape, np.inf)
    origin = np.zeros(distance.shape, int)
    total[0] = distance[0]
    for i in range(1, count):
        best_before = np.minimum.accumulate(total[i - 1])  # best over choices[:j + 1]
        arg_before = np.array([int(np.argmin(total[i - 1][: j + 1])) for j in range(len(choices))])
        total[i, 1:] = best_before[:-1] + distance[i, 1:]
        origin[i, 1:] = arg_before[:-1]
    j = int(np.argmin(total[-1]))
    assigned = [j]
    for i in range(count - 1, 0, -1):
        j = origin[i, j]
        assigned.append(j)
    assigned = np.array([int(choices[j]) for j in reversed(assigned)])
    if np.abs(medians - assigned).mean() > MAP_AGREEMENT:
        return [None] * count  # the map and the pieces disagree: no name rather than a shifted one
    return [EXTENDED_LEVELS[first - 1 + k] if abs(m - k) < 1.0 else None for m, k in zip(medians, assigned)]


def levels_from_log_probabilities(log_probabilities: np.ndarray, level_names, skip_probability: float = None, min_confidence: float = None,
                                  repeat_probability: float = None, temperature: float = None) -> list[str | None]:
    """Level of each vertebra (top-down) or None: the names of ``chain_levels`` (its arguments)."""
    return chain_levels(log_probabilities, level_names, skip_probability, min_confidence, repeat_probability, temperature)[0]


def chain_levels(log_probabilities: np.ndarray, level_names, skip_probability: float = None, min_confidence: float = None,
                 repeat_probability: float = None, temperature: float = None) -> tuple[list[str | None], list[float | None]]:
    """(level of each vertebra top-down or None, the posterior probability of that level on the
    chain or None where unnamed) from each piece's log-probabilities over ``level_names`` (head
    to feet; ``vertebra_level``: read from the picture around it).

    Decision: the pieces form a chain down the spine, so their levels strictly increase;
    skipping ``s`` levels between two neighbouring pieces (a merged pair, a vertebra the
    segmentation missed) has probability ``skip_probability ** s`` (default ``SKIP_PROBABILITY``),
    levels before the first and after the last piece are free (the picture's field of view).
    ``repeat_probability`` (default ``REPEAT_PROBABILITY``; 0 forbids it) lets two neighbouring
    pieces share a level (two pieces of one broken vertebra). The names are the likeliest such
    sequence (Viterbi), so every piece's evidence places the others: an L5 above the sacrum
    and a T12 with its ribs fix the count between them.
    A piece is named only where the posterior probability of its level on that chain (forward-
    backward over all sequences) is at least ``min_confidence`` (default ``MIN_LEVEL_CONFIDENCE``):
    where two sequences are about as likely (the count between the anchors is off by one),
    their names are left undecided rather than guessed. The posterior is reported with each name
    (``vertebrae``: a segment's ``level_posterior``) but is not a calibrated probability of being
    right: on the 47 held-out radiographs' pieces (three sampling seeds) names at 0.9-0.99 were
    right 78 % of the time, at 0.99 and above 94 % (docs/levels.md, session 40). It ranks the
    names by how far to trust them.

    ``temperature`` (default ``LEVEL_TEMPERATURE``): the log-probabilities are divided by it
    before the chain reads them. The patches of neighbouring pieces overlap by most of their
    height (``vertebra_level``: about seven bodies each), so their evidence is far from
    independent, and summed along the chain as if it were it made wrong chains look certain."""
    from scipy.special import logsumexp

    skip = SKIP_PROBABILITY if skip_probability is None else skip_probability
    least = MIN_LEVEL_CONFIDENCE if min_confidence is None else min_confidence
    repeat = REPEAT_PROBABILITY if repeat_probability is None else repeat_probability
    scores = np.asarray(log_probabilities, float) / (LEVEL_TEMPERATURE if temperature is None else temperature)
    count, k = scores.shape[0], len(level_names)
    if count == 0:
        return [], []
    if count > k and not repeat:
        return [None] * count, [None] * count  # more pieces than levels: no chain fits
    step = np.arange(k)[None, :] - np.arange(k)[:, None]  # [from, to]
    with np.errstate(divide="ignore"):
        transition = np.where(step > 0, (step - 1) * np.log(skip), np.where(step == 0, np.log(repeat), -np.inf))
    best, origin = scores[0].copy(), np.zeros((count, k), int)
    forward = np.zeros((count, k))
    forward[0] = scores[0]
    for i in range(1, count):
        candidates = best[:, None] + transition
        origin[i] = candidates.argmax(axis=0)
        best = candidates.max(axis=0) + scores[i]
        forward[i] = logsumexp(forward[i - 1][:, None] + transition, axis=0) + scores[i]
    backward = np.zeros((count, k))
    for i in range(count - 2, -1, -1):
        backward[i] = logsumexp(transition + (scores[i + 1] + backward[i + 1])[None, :], axis=1)
    path = [int(best.argmax())]
    for i in range(count - 1, 0, -1):
        path.append(int(origin[i, path[-1]]))
    path.reverse()
    with np.errstate(invalid="ignore"):
        posterior = np.exp(forward + backward - logsumexp(forward[-1]))
    named = [bool(posterior[i, j] >= least) for i, j in enumerate(path)]
    return ([str(level_names[j]) if ok else None for j, ok in zip(path, named)],
            [round(float(posterior[i, j]), 4) if ok else None for i, (j, ok) in enumerate(zip(path, named))])


def united_names(first: list[str | None], second: list[str | None], least_shared: int = None) -> list[str | None]:
    """Names of the same pieces (top-down) from two level readers' chains, united: where neither
    names a piece otherwise than the other and at least ``least_shared`` pieces (default
    ``UNITED_LEAST_SHARED``) carry the same name from both, each piece takes the name either
    gives it; otherwise ``first``'s names alone.

    Why (docs/levels.md, session 38): the vertebra-level network (``first``) and the spine strip
    (``second``) leave different radiographs' chains unnamed, and a shared stretch of agreeing names
    fixes both chains' count, so each fills in what the other left undecided. Where they name any
    piece differently, one of them counts wrong and nothing says which: the level network's names
    stand, as without the strip."""
    least = UNITED_LEAST_SHARED if least_shared is None else least_shared
    shared = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    if len(first) != len(second) or any(a != b for a, b in shared) or len(shared) < least:
        return list(first)
    return [a if a is not None else b for a, b in zip(first, second)]


def levels_of_a_short_chain(centres_mm: list[float], heights_mm: list[float], levels: list[str] | None) -> list[str | None]:
    """Levels of fewer vertebrae than the card has (top-down: centres along the head direction,
    mm, decreasing; heights along it), on a card whose images always show its lowest level
    (``naming.lowest_level_in_view``): bottom-up from that level when they form one unbroken
    chain: at least 3, no step between neighbours' centres over ``CHAIN_GAP`` median steps (a
    body missed inside the chain) and no piece over ``MERGED_HEIGHT`` median heights (two bodies
    left merged); else None for each.

    Why: a lumbar MR is centred on L1-L5 with the sacrum in view, so the lowest body, L5 on the
    sacrum and among the largest, is drawn; the body a model misses is at the range's upper end
    (T12/L1 at the field's edge). On the held-out VB3_51 the GPU-trained MR model drew L2-L5 and
    no L1, which left all four unnamed (session 15, docs/levels.md)."""
    count = len(centres_mm)
    if not levels or count < 3 or count >= len(levels):
        return [None] * count
    steps = -np.diff(np.asarray(centres_mm, float))
    if (steps <= 0).any() or steps.max() > CHAIN_GAP * float(np.median(steps)):
        return [None] * count
    if max(heights_mm) > MERGED_HEIGHT * float(np.median(heights_mm)):
        return [None] * count
    return list(levels[len(levels) - count :])


def cut_at_the_feet(piece: np.ndarray, shape, head: np.ndarray, spacing: np.ndarray) -> bool:
    """Whether a piece (voxel indices [n, ndim] of a grid of ``shape``) reaches within
    ``FEET_EDGE_MM`` of the picture's inferior edge, along ``head`` (``_head_direction``: a unit
    vector in mm, numpy order) from the grid's lowest corner.

    Why: a lumbar MR card names bottom-up from L5 (``levels_by_count``, ``levels_of_a_short_chain``),
    since a lumbar exam shows L5 on the sacrum. A field of view that stops inside the lumbar spine
    (a thoracic or thoracolumbar exam, a crop) has some other body lowest. On the 8 held-out VB3
    volumes cut at the middle of L4 the count named 72 % of the bodies wrong (L2-L5 on T12-L3);
    there the lowest piece is cut by the edge. In the 40 whole VB3 volumes the truth L5 ends 6-40
    mm above it (median 21). A cut through a disc is not caught (docs/levels.md, session 24)."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(len(shape), -1).T
    lowest_in_grid = float((corners * spacing).dot(head).min())
    return float((piece * spacing).dot(head).min()) - lowest_in_grid < FEET_EDGE_MM


def cut_at_the_head(piece: np.ndarray, shape, head: np.ndarray, spacing: np.ndarray) -> bool:
    """``cut_at_the_feet`` at the picture's superior edge."""
    return cut_at_the_feet(piece, shape, -head, spacing)


def below_the_range(sizes: list[int]) -> bool:
    """Whether the lowest of these vertebrae (sizes in voxels, head to feet) lies below the
    card's range: smaller than ``BELOW_RANGE_SHARE`` of the median vertebra.

    Why: no model segments the sacrum, but the X-ray model sometimes draws the top of S1
    under L5 as a small piece; counted as the lowest vertebra it shifted every name by one.
    L5 is among the largest bodies of every spine, so a lowest piece half the size of the
    median is not it: it is left unnamed and out of the count (with the rest fewer than the
    card's levels, nothing is named). Measured in docs/levels.md.

    Only for cards whose images can show vertebrae below their range (``naming.extra_vertebrae``
    "either": the X-ray cards). The MR model never draws the sacrum, and there a small lowest
    piece is an L5 drawn in part: on the held-out VB3_49 (a T12 found above L1, L5 a fifth of
    its size) the rule shifted all five names; applied to the X-ray cards only, the 8 held-out
    MR subjects went from 87.5 % named right and 10 % wrong (level Dice 0.794) to 100 % and 0 %
    (0.871; docs/levels.md, session 10)."""
    return len(sizes) >= 3 and sizes[-1] < BELOW_RANGE_SHARE * float(np.median(sizes))


def name_vertebrae(labels: sitk.Image, card, gaps: np.ndarray | None = None, coordinates: np.ndarray | None = None, level_reader=None,
                   rib_counter=None) -> tuple[sitk.Image, list[dict], list[dict]]:
    """Per-vertebra label map, segment descriptions and the vertebrae left out (a card with
    ``naming.leave_out_beyond_levels``: level, name, voxels of each piece named beyond its
    levels, ``vertebrae``) for a model card's result.

    A multi-class card (one label per level) keeps its labels, each named by its level;
    a binary card's foreground is separated into vertebrae and named (module docstring).
    An empty result keeps the card's labels (with no voxels), so every output still has
    its segment. ``gaps``: where a card's gap channel sees gaps between vertebrae (boolean,
    the label map's array shape; ``separate_instances``). ``coordinates``: the card's level
    map on the label map's grid (``level_map``): where the count names nothing, the vertebrae
    are named from it (``levels_from_coordinates``). ``level_reader``: the card's level network
    on the picture (``vertebra_level.PieceLevelReader``); where the count names nothing, it
    names the pieces before the level map is asked (``vertebrae``). ``rib_counter``: the rib
    counts on the CT (``ribs.RibCounter``, a card with ``naming.rib_anchor``); where the count
    names nothing, the pieces are named from the last rib-bearing vertebra."""
    if not sitk.GetArrayViewFromImage(labels).any():
        return labels, [{**info, "level": None} for info in card.labels], []
    if len(card.labels) > 1:
        by_value = {int(info["value"]): _level_in(info) for info in card.labels}
        labels, segments = vertebrae(labels, structure_of(card.labels[0]), label_levels=by_value)
    else:
        labels, segments = vertebrae(
            labels, structure_of(card.labels[0]), levels=card_levels(card), gaps=gaps, extra_vertebrae=card.extra_vertebrae, coordinates=coordinates,
            level_reader=level_reader, rib_counter=rib_counter, lowest_level_in_view=card.lowest_level_in_view,
            leave_out_beyond_levels=card.leave_out_beyond_levels,
        )
    left_out = [{k: v for k, v in s.items() if k != "left_out"} for s in segments if s.get("left_out")]
    segments = [s for s in segments if not s.get("left_out")]
    for segment in segments:
        if segment["level"] is None:  # what the card's label says (e.g. "Vertebral body" in the lumbar spine)
            segment["terminology"] = terminology_for_label(card.labels[0])
    return labels, segments, left_out


def _level_in(info: dict) -> str | None:
    words = f"{info.get('covers', '')} {info.get('name', '')}".replace("-", " ").split()
    return next((word for word in words if word in LEVELS), None)


def vertebrae(
    labels: sitk.Image,
    structure: str,
    levels: list[str] | None = None,
    label_levels: dict[int, str | None] | None = None,
    gaps: np.ndarray | None = None,
    extra_vertebrae: str = "above",
    coordinates: np.ndarray | None = None,
    level_reader=None,
    rib_counter=None,
    lowest_level_in_view: bool = False,
    leave_out_beyond_levels: bool = False,
) -> tuple[sitk.Image, list[dict]]:
    """The label map with one value per vertebra (1..n head to feet) and one dict per
    vertebra: value, name, covers, level (or None), level_source (what decided the level:
    "labels" of a multi-class card, "count", "ribs", "sacrum", "level network" or "level map"; None
    without a level), color, terminology, height_mm.
    ``rib_counter``: ``ribs.RibCounter`` on the CT; where the count names nothing, the pieces
    are named from the last rib-bearing vertebra (``levels_from_ribs``), a piece that
    holds two rib pairs and is about two vertebrae tall first cut in two (``_split_two_rib_pairs``);
    a lowest piece that meets both iliac wings and is two vertebrae tall is cut into L5 and S1
    first (``_split_sacrum``), and without the ribs' junction in view the pieces are named up
    from the sacrum (``levels_from_sacrum``).
    ``extra_vertebrae``: the card's ``naming.extra_vertebrae`` (``levels_by_count``).
    ``lowest_level_in_view``: the card's ``naming.lowest_level_in_view``; fewer vertebrae than its
    levels in one unbroken chain are named bottom-up from its lowest level (``levels_of_a_short_chain``).
    ``leave_out_beyond_levels``: the card's ``naming.leave_out_beyond_levels``; a piece named
    beyond ``levels`` (a C7 above an X-ray card's T1) gets no value in the label map, and its
    description (level, name, voxels, ``"left_out": True``) follows the others' in the list
    (``name_vertebrae`` takes them off); unnamed pieces stay.
    ``coordinates``: a level map on the label map's grid; where the count names nothing,
    the vertebrae are named by their median coordinate (``levels_from_coordinates``).
    ``level_reader``: ``reader.read_levels(instances, values)`` -> (each piece's level or None,
    its posterior on the chain or None) (``vertebra_level.PieceLevelReader``: the chain over its
    level log-probabilities, ``chain_levels``, united with a spine strip's where the card has
    one); where the count names nothing, the pieces are named so before the level map is asked,
    and neighbouring pieces given one level become one vertebra (two pieces of one body, the
    upper one's posterior kept). Each segment's ``level_posterior`` is that posterior where the
    level network named it, else None (the count, ribs, sacrum and level map give none).

    ``label_levels`` (multi-class results): label value -> level; the values are kept
    as instances and as values. Otherwise the foreground is separated (``separate_instances``) and
    named with ``levels_by_count(n, levels)``. ``height_mm`` is the extent along the local
    spine axis (the line through the neighbours' centroids), mm (pixels for pictures
    without spacing)."""
    array = sitk.GetArrayViewFromImage(labels)
    spacing, superior = _spacing(labels), superior_axis(labels)
    if label_levels is not None:
        instances = np.where(np.isin(array, list(label_levels)), array, 0).astype(np.int32)
    elif structure == "vertebra" and gaps is None:  # whole vertebrae (CT): grown from their cores
        instances = separate_whole_vertebrae(array > 0, spacing, superior)
    else:
        instances = separate_instances(array > 0, spacing, superior, gaps)
    # Each vertebra's voxel indices, from one pass over the foreground (not one per vertebra).
    foreground = np.argwhere(instances > 0)
    owner = instances[tuple(foreground.T)]
    order = np.argsort(owner, kind="stable")
    values, starts = np.unique(owner[order], return_index=True)
    values = [int(v) for v in values]
    points = dict(zip(values, np.split(foreground[order], starts[1:])))
    height_order = {v: float(points[v].mean(axis=0) @ superior) for v in values}
    ordered = sorted(values, key=lambda v: -height_order[v])  # head first
    if label_levels is not None:
        names, source = [label_levels.get(v) for v in ordered], "labels"
    else:
        below = int(extra_vertebrae == "either" and below_the_range([len(points[v]) for v in ordered]))
        names, source = levels_by_count(len(ordered) - below, levels, extra_vertebrae) + [None] * below, "count"
        head = _head_direction(superior, spacing)
        if lowest_level_in_view and cut_at_the_feet(points[ordered[-1]], instances.shape, head, spacing):
            names = [None] * len(ordered)  # the lowest level need not be in view: count from nothing
        elif lowest_level_in_view and not any(names):  # fewer than the card's levels: a body missed at the top?
            names = levels_of_a_short_chain(_piece_centres(ordered, points, spacing, head), _piece_heights(ordered, points, spacing, head), levels)
        if rib_counter is not None and not any(names):  # a CT: the last rib-bearing vertebra is T12
            ribs, ilia = rib_counter.ribs_and_ilia(instances, ordered)
            ordered, ribs, ilia = _split_sacrum(instances, ordered, ribs, ilia, points, spacing, superior)
            volumes_cm3 = [len(points[v]) * float(np.prod(spacing)) / 1000.0 for v in ordered]
            sacrum_names = levels_from_sacrum(ribs, ilia, volumes_cm3, EXTENDED_LEVELS)  # before a split changes the order
            ordered, ribs = _split_two_rib_pairs(instances, ordered, ribs, points, spacing, superior)
            top_cut = cut_at_the_head(points[ordered[0]], instances.shape, head, spacing)
            names, source = levels_from_ribs(ribs, EXTENDED_LEVELS, _piece_centres(ordered, points, spacing, head),
                                             _piece_heights(ordered, points, spacing, head), top_cut), "ribs"
            if not any(names) and any(sacrum_names) and len(sacrum_names) == len(ordered):  # no junction in view: the sacrum
                names, source = sacrum_names, "sacrum"
        if level_reader is not None and not any(names):  # the count decides nothing: each piece's look does
            (names, posteriors), source = level_reader.read_levels(instances, ordered), "level network"
            ordered, names, posteriors = _merge_repeated_levels(ordered, names, points, posteriors)
        if coordinates is not None and not any(names):  # nor the pieces' look: the level map does
            coordinates = np.asarray(coordinates).reshape(instances.shape)
            names = levels_from_coordinates([float(np.median(coordinates[tuple(points[v].T)])) for v in ordered], levels)
            source = "level map"
    if source != "level network":  # only the level network's chain gives a posterior
        posteriors = [None] * len(ordered)
    left_out = []
    if leave_out_beyond_levels and levels:
        beyond = [name is not None and name not in levels for name in names]
        left_out = [{"level": name, "name": f"{name} {structure}", "voxels": len(points[v]), "left_out": True}
                    for v, name, out in zip(ordered, names, beyond) if out]
        kept = [not out for out in beyond]
        ordered, names, posteriors = ([item for item, keep in zip(items, kept) if keep] for items in (ordered, names, posteriors))
    relabelled = np.zeros(instances.shape, np.uint8 if max(ordered + [len(ordered)], default=0) < 256 else np.uint16)
    centroids = [_physical(points[v].astype(float), labels).mean(axis=0) for v in ordered]
    steps = np.reshape(labels.GetDirection(), (labels.GetDimension(),) * 2) * np.asarray(labels.GetSpacing())
    head = np.array([0.0, 0.0, 1.0]) if labels.GetDimension() == 3 else np.array([0.0, -1.0])  # LPS superior; up the picture
    segments = []
    for index, value in enumerate(ordered):
        new_value = value if label_levels is not None else index + 1  # a multi-class card keeps its values
        relabelled[tuple(points[value].T)] = new_value
        above = centroids[index - 1] if index > 0 else None
        below = centroids[index + 1] if index + 1 < len(ordered) else None
        if above is not None or below is not None:
            axis = (above if above is not None else centroids[index]) - (below if below is not None else centroids[index])
        else:
            axis = head
        axis = axis / max(np.linalg.norm(axis), 1e-12)
        along = _physical(points[value].astype(float), labels) @ axis
        height = float(along.max() - along.min() + np.abs(steps.T @ axis).sum())
        level = names[index]
        name = f"{level} {structure}" if level else f"{structure} {index + 1}"
        covers = f"{structure} {level}" if level else f"{structure} {index + 1} of {len(ordered)} top-down (level not decided)"
        entry = {"value": new_value, "name": name, "covers": covers, "level": level, "level_source": source if level else None,
                 "level_posterior": posteriors[index] if level else None, "color": level_color(level, index)}
        entry["terminology"] = terminology_for_label(entry)
        entry["height_mm"] = round(height, 2)
        segments.append(entry)
    out = sitk.GetImageFromArray(relabelled)
    out.CopyInformation(labels)
    return out, segments + left_out


def levels_from_ribs(ribs: list[int], levels: list[str], centres_mm: list[float] | None = None,
                     heights_mm: list[float] | None = None, top_cut: bool = False) -> list[str | None]:
    """Names top-down from each vertebra's rib count (top-down, ``ribs_per_vertebra``) along
    ``levels`` (cranio-caudal, containing T12); None where a name is not decided.

    The anchor is the lowest rib-bearing vertebra with two vertebrae without ribs below it:
    T12 (two, not one: the iliac wings beside S1 or L5 can pass for ribs, and lie below the
    lumbar run, never above two vertebrae without ribs). Below it the names run on (L1 ...
    L5, S1). Above it, counting up, a piece with one or two ribs is one vertebra; with four it
    is two merged vertebrae (both sides twice: on the chest CT the model's T10 and T11 are one
    piece with 4 ribs), left unnamed and counted as two; with none, three, or more than four
    (the ribs 1-2, which meet the clavicles and scapulae and are not found; a rib credited to
    its neighbour) the count is lost, and that piece and those above are left unnamed. No
    anchor: None for each.

    With the pieces' ``centres_mm`` (along the head direction, top-down) and ``heights_mm``,
    a piece without ribs above a vertebra named singly is counted as the next vertebra up
    when its geometry says it is one (``one_vertebra_above``): the ribs 1-2 and the cervical
    spine carry no rib found, and on the chest CT T1 and C7 were left unnamed above a named
    T2 although the model had drawn each apart (session 29, docs/levels.md). ``top_cut``: the
    top piece reaches the field of view's superior edge (``cut_at_the_head``), and is not
    counted so: it may hold the vertebra the edge cuts, merged (the model's C7 with the cut C6
    on the chest CT)."""
    junction = [i for i in range(len(ribs) - 2) if ribs[i] and not ribs[i + 1] and not ribs[i + 2]]
    if not junction or "T12" not in levels:
        return [None] * len(ribs)
    anchor, t12 = junction[-1], levels.index("T12")
    names: list[str | None] = [None] * len(ribs)
    for i in range(anchor + 1, len(ribs)):
        names[i] = levels[t12 + i - anchor] if t12 + i - anchor < len(levels) else None
    lowest = t12  # the level of the lowest vertebra in the piece looked at, counting up
    for i in range(anchor, -1, -1):
        span = {1: 1, 2: 1, 4: 2}.get(ribs[i])
        if span is None and ribs[i] == 0 and centres_mm is not None and heights_mm is not None:
            span = 1 if one_vertebra_above(i, names, centres_mm, heights_mm) and not (i == 0 and top_cut) else None
        if span is None or lowest - span + 1 < 0:
            break
        names[i] = levels[lowest] if span == 1 else None
        lowest -= span
    return names


STEP_RATIO = (0.6, 1.5)  # of the step below: a step between centres within this is one vertebra further (``one_vertebra_above``)


def one_vertebra_above(index: int, names: list[str | None], centres_mm: list[float], heights_mm: list[float]) -> bool:
    """Whether piece ``index`` (top-down) is one vertebra directly above piece ``index + 1``,
    which is named: the step between their centres is ``STEP_RATIO`` times the step below
    (a wider one: a vertebra missed between them; a narrower one: a fragment, or a vertebra
    cut by the field of view's edge), and the piece is under ``TWO_VERTEBRAE_HEIGHT[0]`` times
    the height of the one below (not two merged).

    Decided on the chest CT (the CT model's training image, C5-L3; its truth and the model's
    pieces alike): steps up the upper thorax and the cervicothoracic junction are 0.78-0.95 of
    the step below, the C6 that the field of view cuts 0.47; heights fall going up. Judged
    piece by piece against the one below, so the spine's gradual change does not count."""
    below = index + 1
    if below + 1 >= len(centres_mm) or names[below] is None:
        return False
    step, step_below = centres_mm[index] - centres_mm[below], centres_mm[below] - centres_mm[below + 1]
    if step_below <= 0 or not STEP_RATIO[0] <= step / step_below <= STEP_RATIO[1]:
        return False
    return heights_mm[index] < TWO_VERTEBRAE_HEIGHT[0] * heights_mm[below]


LUMBAR_MIN_CM3 = 30.0  # ``levels_from_sacrum``: whole lumbar vertebrae are 45-65 cm3 (the development CTs), C6-C7 under 15


def levels_from_sacrum(ribs: list[int], ilia: list[int], volumes_cm3: list[float], levels: list[str]) -> list[str | None]:
    """Names top-down from the sacrum (``ribs.ribs_and_ilia_per_vertebra``; all lists
    top-down): the lowest piece is S1 when both iliac wings meet it, the piece above bears no
    rib, and the (up to) two pieces above it average at least ``LUMBAR_MIN_CM3`` (lumbar, not
    the cervical vertebrae above a T1 with its first ribs); the pieces above are counted up
    from it. A piece named lumbar that bears a rib contradicts the count (a merged or missed
    vertebra): then nothing is named. Otherwise None for each."""
    n = len(ribs)
    if n < 2 or "S1" not in levels or ilia[-1] < 2 or ribs[-2] or np.mean(volumes_cm3[max(n - 3, 0) : n - 1]) < LUMBAR_MIN_CM3:
        return [None] * n
    s1 = levels.index("S1")
    names = [levels[s1 - (n - 1 - i)] if s1 - (n - 1 - i) >= 0 else None for i in range(n)]
    if any(name and name.startswith("L") and count for name, count in zip(names, ribs)):
        return [None] * n
    return names


TWO_VERTEBRAE_HEIGHT = (1.4, 2.0)  # of the median piece's height: a piece with two rib pairs this tall holds two vertebrae


def _split_two_rib_pairs(instances: np.ndarray, ordered: list[int], ribs: list[int], points: dict[int, np.ndarray], spacing: np.ndarray,
                         superior: np.ndarray) -> tuple[list[int], list[int]]:
    """Cut each piece with four ribs (two on each side: two vertebrae) whose height along the
    spine is ``TWO_VERTEBRAE_HEIGHT`` times the median piece's into two at its narrowest
    section (``_split``), each part with two ribs; ``instances`` and ``points`` are updated in
    place; returns the order (head first) and rib counts with the new pieces.

    Why: the CT model's thoracic vertebrae touch and merge (on the chest CT T10 with T11: 4
    ribs, 52 mm along the head direction against a median piece of 32 mm, 1.6 times); the
    rib count says how many vertebrae the piece holds, and the height checks it: the chest's
    top piece holds T1-T4 with the ribs 1-2 unseen (4 ribs, 2.15 times the median), is left
    whole, and ``levels_from_ribs`` stops there. The bounds 1.4-2.0 were set on that one
    chest CT (the model's training CT): a merged pair is about two bodies and one disc tall.
    Where no section narrows, the piece is cut at half its length."""
    axis = _head_direction(superior, spacing)
    heights = dict(zip(ordered, _piece_heights(ordered, points, spacing, axis)))
    typical = float(np.median(list(heights.values())))
    counts = dict(zip(ordered, ribs))
    for value in list(ordered):
        if counts[value] != 4 or not TWO_VERTEBRAE_HEIGHT[0] <= heights[value] / typical <= TWO_VERTEBRAE_HEIGHT[1]:
            continue
        new = _cut_in_two(instances, points, value, int(max(counts)) + 1, spacing, axis, heights[value])  # the ribs say two
        if new is not None:
            counts[value] = counts[new] = 2
    ordered = sorted(counts, key=lambda v: -float(points[v].mean(axis=0) @ superior))
    return ordered, [counts[v] for v in ordered]


def _split_sacrum(instances: np.ndarray, ordered: list[int], ribs: list[int], ilia: list[int], points: dict[int, np.ndarray], spacing: np.ndarray,
                  superior: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Cut the lowest piece in two when both iliac wings meet it and it is
    ``TWO_VERTEBRAE_HEIGHT`` times the median piece's height: L5 merged with S1 (they touch in
    the abdominal CT's truth: a piece 65-77 mm tall against a median of 44 mm, 1.5-1.75 times)
    and holds at least ``TWO_VERTEBRAE_HEIGHT[0]`` times the median piece's voxels (S1 alone,
    as ``separate_whole_vertebrae`` parts it, is 66 mm tall along the spine with its alae but
    0.8 times the median piece's bone; L5 with S1 1.65 times).
    The lower part keeps the wings (and the piece's rib count: a wing under ``RIB_MAX_CM3``
    counts as a rib too), the upper part has neither. Returns the order (head first), ribs and
    wings with the new piece; ``instances`` and ``points`` are updated in place."""
    if len(ordered) < 3 or ilia[-1] < 2:
        return ordered, ribs, ilia
    axis = _head_direction(superior, spacing)
    heights = _piece_heights(ordered, points, spacing, axis)
    lowest = ordered[-1]
    if not TWO_VERTEBRAE_HEIGHT[0] <= heights[-1] / float(np.median(heights[:-1])) <= TWO_VERTEBRAE_HEIGHT[1]:
        return ordered, ribs, ilia
    if len(points[lowest]) < TWO_VERTEBRAE_HEIGHT[0] * float(np.median([len(points[v]) for v in ordered[:-1]])):
        return ordered, ribs, ilia  # tall but not two vertebrae's bone: S1 alone, its alae reaching up beside L5
    new = _cut_in_two(instances, points, lowest, int(max(ordered)) + 1, spacing, axis, heights[-1])
    if new is None:
        return ordered, ribs, ilia
    upper, lower = sorted((lowest, new), key=lambda v: -float(points[v].mean(axis=0) @ superior))
    return ordered[:-1] + [upper, lower], ribs[:-1] + [0, ribs[-1]], ilia[:-1] + [0, ilia[-1]]


def _head_direction(superior: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The head direction as a unit vector in mm, numpy order (``superior``: per voxel step)."""
    head = superior / spacing
    return head / np.linalg.norm(head)


def _piece_centres(ordered: list[int], points: dict[int, np.ndarray], spacing: np.ndarray, axis: np.ndarray) -> list[float]:
    """Each piece's centre along ``axis`` (mm), in the order of ``ordered``."""
    return [float((points[v] * spacing).mean(axis=0) @ axis) for v in ordered]


def _piece_heights(ordered: list[int], points: dict[int, np.ndarray], spacing: np.ndarray, axis: np.ndarray) -> list[float]:
    """Each piece's extent along ``axis`` (mm), in the order of ``ordered``."""
    return [_extent_across(_box_mask(points[v])[0], spacing, axis) for v in ordered]


def _cut_in_two(instances: np.ndarray, points: dict[int, np.ndarray], value: int, new: int, spacing: np.ndarray, axis: np.ndarray,
                height: float) -> int | None:
    """Cut piece ``value`` in two at its narrowest section across ``axis`` (``_split``, at
    half its length where none narrows); the second part becomes ``new``. Returns ``new``,
    or None where it did not cut."""
    piece, corner = _box_mask(points[value])
    parts = _split(piece, spacing, axis, 2, height / 2, equal_cut_height=0.0)
    if len(parts) != 2:
        return None
    for part, part_value in zip(parts, (value, new)):
        where = np.argwhere(part) + corner
        instances[tuple(where.T)] = part_value
        points[part_value] = where
    return new


def _box_mask(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel indices -> (boolean mask over their bounding box, the box's corner index)."""
    corner = points.min(axis=0)
    mask = np.zeros(points.max(axis=0) - corner + 1, bool)
    mask[tuple((points - corner).T)] = True
    return mask, corner


def _merge_repeated_levels(ordered: list[int], names: list[str | None], points: dict[int, np.ndarray],
                           posteriors: list[float | None]) -> tuple[list[int], list[str | None], list[float | None]]:
    """Neighbouring pieces named with one level become one vertebra: the lower piece's voxels
    join the upper one's (in ``points``); returns the remaining values, their names and their
    posteriors (the upper piece's)."""
    kept, kept_names, kept_posteriors = [], [], []
    for value, name, posterior in zip(ordered, names, posteriors):
        if kept and name is not None and name == kept_names[-1]:
            points[kept[-1]] = np.concatenate([points[kept[-1]], points.pop(value)])
            continue
        kept.append(value)
        kept_names.append(name)
        kept_posteriors.append(posterior)
    return kept, kept_names, kept_posteriors


# -------------------------------------------------------------------------- metrics


def level_scores(predicted: np.ndarray, predicted_levels: dict[int, str | None], truth: np.ndarray, truth_levels: dict[int, str]) -> dict:
    """Per-level Dice and the share of vertebrae named with the right level.

    ``predicted``/``truth``: instance label maps on one grid; ``*_levels``: value -> level
    (None: unnamed). Per truth level: Dice of the predicted segment named with that level
    (0 when none is). A truth vertebra counts as correctly named when the predicted
    vertebra that overlaps it most carries its level, wrongly named when that one carries
    another level (not when it carries none). ``separated_share``: truth vertebrae
    whose most-overlapping predicted vertebra overlaps it more than any other truth
    vertebra (one-to-one: instance separation right, whatever the names).
    ``level_dice_names_aside``: the mean Dice of each truth vertebra with its most-overlapping
    predicted vertebra (0 where none overlaps), whatever its name: the segmentation's share of
    a low level Dice, the rest being the naming's."""
    dice, correct, wrong, separated, aside = {}, 0, 0, 0, []
    named = {level: value for value, level in predicted_levels.items() if level}
    for value, level in truth_levels.items():
        inside = truth == value
        if not inside.any():
            continue
        mine = predicted == named[level] if level in named else np.zeros_like(inside)
        total = inside.sum() + mine.sum()
        dice[level] = round(float(2 * (inside & mine).sum() / total), 4) if total else 1.0
        overlap = np.bincount(predicted[inside].ravel().astype(np.int64))
        overlap[0] = 0
        if overlap.any() and predicted_levels.get(int(overlap.argmax())) == level:
            correct += 1
        elif overlap.any() and predicted_levels.get(int(overlap.argmax())) is not None:
            wrong += 1
        if overlap.any():
            piece = predicted == overlap.argmax()
            back = np.bincount(truth[piece].ravel().astype(np.int64))
            back[0] = 0
            separated += int(back.argmax() == value)
            aside.append(2 * (piece & inside).sum() / (piece.sum() + inside.sum()))
        else:
            aside.append(0.0)
    return {
        "level_dice": dice,
        "level_dice_mean": round(float(np.mean(list(dice.values()))), 4) if dice else None,
        "level_dice_names_aside": round(float(np.mean(aside)), 4) if aside else None,
        "vertebrae": len(dice),
        "correctly_named": correct,
        "correctly_named_share": round(correct / len(dice), 4) if dice else None,
        "wrongly_named": wrong,
        "separated_share": round(separated / len(dice), 4) if dice else None,
    }
